"""A job sent again goes to the front of its priority level: it starts before the jobs of
its priority queued after it, and still after the jobs of a higher priority. Real Redis,
database and worker processes; the one worker runs one job at a time, so the order in
which the jobs start is the order in which the broker gave them out."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from ops.reaper import Reaper
from shared.config import get_settings
from shared.enqueue import send_job
from shared.schemas import JobOut
from tests.fleet import Fleet, events, wait, wait_epoch
from tests.helpers import unique
from tests.test_lifecycle import SLOW_TRAINING


def _submit(client: Any, prefix: str, **extra: Any) -> dict[str, Any]:
    body = {"model_name": unique(prefix), "family": "mlp", "dataset": {"builtin": "iris"}}
    response = client.post("/v1/jobs/train", json={**body, **extra})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def _take_message(broker: redis.Redis, job_id: str) -> None:
    """Take a job's message out of its queue, as a worker that took it and died before it
    claimed the job leaves it (or a Redis that lost it)."""
    for key in broker.scan_iter(match="train*", _type="list"):
        for raw in broker.lrange(key, 0, -1):
            if json.loads(raw)["headers"]["id"] == job_id:
                assert isinstance(raw, str)  # a client that decodes
                assert broker.lrem(key, 1, raw) == 1
                return
    raise AssertionError(f"no message of job {job_id} in the broker")


def _started_in_order(client: Any, ids: list[str]) -> list[dict[str, Any]]:
    """The jobs once they end, in the order they started; each ran once, and succeeded."""
    done = [wait(client, job_id) for job_id in ids]
    for job in done:
        assert job["state"] == "succeeded", job["error"]
        kinds = Counter(e["kind"] for e in events(client, job["id"]))
        assert kinds["succeeded"] == 1, kinds
    return sorted(done, key=lambda job: job["started_at"])


def _job(kind: str, priority: int, queue: str) -> JobOut:
    stamp = datetime.now(UTC)
    return JobOut(
        id=unique("job"), kind=kind, state="queued", model_name="m", model_version=None,
        queue=queue, progress=None, result=None, error=None, attempts=0, max_attempts=3,
        priority=priority, usage=None, worker=None, message=None, submitted_by=None,
        cancelled_by=None, created_at=stamp, updated_at=stamp, started_at=None,
        finished_at=None, heartbeat_at=None, spec={},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "priority", "front"),
    [("train", 0, True), ("train", 9, True), ("predict", 8, True), ("predict", 9, False)],
)
def test_a_job_sent_again_goes_ahead_of_its_level_but_never_of_sync_predictions(
    kind: str, priority: int, front: bool
) -> None:
    """A prediction of the top priority shares its level with the batches of sync
    predictions: sent again, it still waits behind what that level holds."""
    queue = unique("order")  # a queue no worker serves
    waiting = [_job(kind, priority, queue) for _ in range(2)]
    for job in waiting:
        send_job(job)
    again = _job(kind, priority, queue)
    send_job(again, first=True)
    broker = redis.Redis.from_url(get_settings().broker_url)
    keys = broker.keys(f"{queue}*")
    try:
        assert len(keys) == 1  # one level
        # Consumers pop the right end: reversed, the list is the order they take it in.
        taken = [
            json.loads(raw)["headers"]["id"] for raw in reversed(broker.lrange(keys[0], 0, -1))
        ]
    finally:
        broker.delete(*keys)
    behind = [job.id for job in waiting]
    assert taken == ([again.id, *behind] if front else [*behind, again.id])


@pytest.mark.slow
def test_a_lost_job_sent_again_starts_before_the_jobs_queued_after_it(
    api_client: Any, fleet: Fleet
) -> None:
    lost = _submit(api_client, "lost")
    after = [_submit(api_client, f"after{i}") for i in range(3)]
    _take_message(redis.Redis.from_url(fleet.redis_url, decode_responses=True), lost["id"])
    # The reaper sends it again once it has been queued for TORCHQUEUE_RESEND_AFTER_SECONDS
    # with no message in the broker.
    deadline = time.monotonic() + 20
    while not Reaper().run_once()["resent"]:
        assert time.monotonic() < deadline, "the reaper never sent the lost job again"
        time.sleep(0.2)
    urgent = _submit(api_client, "urgent", priority=5)

    fleet.worker()
    ran = _started_in_order(api_client, [lost["id"], *(j["id"] for j in after), urgent["id"]])

    assert [j["id"] for j in ran] == [urgent["id"], lost["id"], *(j["id"] for j in after)]
    assert [j["attempts"] for j in ran] == [1] * 5
    assert "resent" in {e["kind"] for e in events(api_client, lost["id"])}


@pytest.mark.slow
def test_a_job_given_back_starts_before_the_jobs_queued_after_it(
    api_client: Any, fleet: Fleet
) -> None:
    first = fleet.worker()
    body = {"model_name": unique("given"), **SLOW_TRAINING}
    body["training"] = {**SLOW_TRAINING["training"], "epochs": 4}
    given = api_client.post("/v1/jobs/train", json=body).json()
    wait_epoch(api_client, given["id"], 1)
    after = [_submit(api_client, f"after{i}") for i in range(3)]
    os.killpg(first.pid, signal.SIGTERM)  # a clean shutdown: the worker gives the job back
    first.wait(30)
    assert wait(api_client, given["id"], until=("queued",), timeout=10)["attempts"] == 0

    fleet.worker()
    ran = _started_in_order(api_client, [given["id"], *(j["id"] for j in after)])

    assert [j["id"] for j in ran] == [given["id"], *(j["id"] for j in after)]
    assert [j["attempts"] for j in ran] == [1] * 4
    assert "requeued" in {e["kind"] for e in events(api_client, given["id"])}
