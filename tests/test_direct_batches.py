"""Batches of sync predictions sent straight to a prediction worker's own consumer: what a
worker or the API killed mid-batch leaves behind is still answered or recorded, once."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from api.batcher import SERVED_TTL_SECONDS
from shared import processes
from shared.constants import DIRECT_TAKEN, JOBS_HEADER
from shared.processes import free_port
from shared.routing import direct_queue, predict_queue
from tests.fleet import Fleet
from tests.helpers import ADMIN_KEY, unique, wait_listening
from tests.test_serving import IRIS, recorded, register

pytestmark = pytest.mark.slow


def _held(client: redis.Redis, pool: str) -> set[str]:
    """The jobs of the batches waiting in the pool's direct list or taken by a worker."""
    raws = client.lrange(direct_queue(predict_queue(pool)), 0, -1)
    for key in client.scan_iter(match=DIRECT_TAKEN + "*"):
        raws += client.lrange(key, 0, -1)
    return {job for raw in raws for job in json.loads(raw)["headers"][JOBS_HEADER]}


def test_a_worker_killed_after_answering_loses_no_record(fleet: Fleet, api_client: Any) -> None:
    fleet.start("reaper")
    pool = unique("direct")
    argv = ["--cpu", "--queues", "predict", "--pool", pool]
    # A worker whose writer holds every record for a minute: answered, not yet written.
    first = fleet.worker(*argv, name="cpu-predict@", env={"TORCHQUEUE_RESULT_FLUSH_MS": "60000"})
    name = unique("m")
    register(name, epochs=1)
    time.sleep(SERVED_TTL_SECONDS + 0.5)  # the API's view of the served queues catches up
    answers = []
    for row in IRIS:
        response = api_client.post(
            f"/v1/models/{name}/predict", json={"inputs": [row], "pool": pool}
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    for answer in answers:
        assert api_client.get(f"/v1/jobs/{answer['job_id']}").status_code == 404
    broker = redis.Redis.from_url(fleet.redis_url)
    assert _held(broker, pool) == {a["job_id"] for a in answers}  # kept until recorded

    fleet.kill9(first)
    fleet.worker(*argv, name="cpu-predict@")  # the reaper gives the batches back; it runs them
    for answer in answers:
        job = recorded(api_client, answer["job_id"], timeout=60)
        assert job["state"] == "succeeded", job
        assert job["result"]["outputs"] == answer["outputs"]
    deadline = time.monotonic() + 10
    while _held(broker, pool):  # taken off the list once recorded
        assert time.monotonic() < deadline, _held(broker, pool)
        time.sleep(0.1)


def test_an_api_killed_mid_batch_loses_no_prediction(fleet: Fleet, api_client: Any) -> None:
    pool = unique("direct")
    worker = fleet.worker("--cpu", "--queues", "predict", "--pool", pool, name="cpu-predict@")
    name = unique("m")
    register(name, epochs=1)
    port = free_port()
    api = fleet.start("api", "--port", str(port))
    wait_listening(port, api, fleet.logs / f"api-{len(fleet.procs) - 1}.log")
    url = f"http://127.0.0.1:{port}/v1/models/{name}/predict"
    key = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(timeout=30, headers=key) as http:  # the API's view of served queues
        assert http.post(url, json={"inputs": IRIS, "pool": pool}).status_code == 200
    time.sleep(SERVED_TTL_SECONDS + 0.5)
    broker = redis.Redis.from_url(fleet.redis_url)

    def call(row: list[float]) -> int:
        try:
            body = {"inputs": [row], "pool": pool}
            return httpx.post(url, json=body, headers=key, timeout=30).status_code
        except httpx.HTTPError:
            return 0  # the API went away before it answered

    processes.signal_group(worker, signal.SIGSTOP)  # the batches wait for the worker
    try:
        with ThreadPoolExecutor(8) as pool_of_callers:
            calls = [pool_of_callers.submit(call, IRIS[i % 4]) for i in range(8)]
            deadline = time.monotonic() + 10
            while len(held := _held(broker, pool)) < 8:
                assert time.monotonic() < deadline, held
                time.sleep(0.05)
            processes.signal_group(api, signal.SIGKILL)
            api.wait()
            assert {c.result() for c in calls} == {0}
    finally:
        processes.signal_group(worker, signal.SIGCONT)
    for job_id in held:  # every prediction the API had sent is run and recorded
        job = recorded(api_client, job_id, timeout=60)
        assert job["state"] == "succeeded", job
        assert len(job["result"]["outputs"]) == 1
