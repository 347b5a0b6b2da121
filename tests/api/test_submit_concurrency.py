"""Submissions under concurrency, as the group commit (``api.submitter``) records them:
every answered job committed and its message in the broker exactly once; the same
Idempotency-Key raced makes one job; a broker that is down still answers 201, and the
reaper sends the jobs later; an API process killed with -9 mid-burst has committed every
job it answered 201 for, and the reaper sends each."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from shared import processes
from shared.config import get_settings
from shared.db import jobs, model_registry
from shared.db.models import Job
from shared.db.session import session_scope
from shared.jobstate import JobKind
from shared.processes import free_port
from tests.fleet import Fleet
from tests.helpers import AUTH, reset_caches, start_process, unique

ROW = [5.1, 3.5, 1.4, 0.2]


def _train(pool: str, model: str | None = None) -> dict[str, Any]:
    """A training job for ``pool``, which no worker serves: its message stays queued."""
    return {"model_name": model or unique("burst"), "family": "mlp",
            "dataset": {"builtin": "iris"}, "resources": {"pool": pool}}  # fmt: skip


def _model() -> str:
    """A model with one version (its artifact is never read here)."""
    name = unique("burst-model")
    with session_scope() as s:
        job = jobs.create_job(
            s, kind=JobKind.train, model_name=name, spec={}, queue="train.default.d1.m0"
        )
        model_registry.register_model_version(
            s, model_name=name, family="mlp", params={}, input_schema={"kind": "features",
            "n_features": 4}, metrics={}, artifact_uri="file:///nowhere", sha256="0" * 64,
            job_id=job.id,
        )  # fmt: skip
    return name


def _messages(url: str, pool: str) -> Counter[str]:
    """The job ids of the messages waiting in ``pool``'s queues (every kind and level)."""
    client = redis.Redis.from_url(url)
    found: Counter[str] = Counter()
    for prefix in ("train", "predict"):
        for key in client.scan_iter(match=f"{prefix}.{pool}*", _type="list"):
            for raw in client.lrange(key, 0, -1):
                found[json.loads(raw)["headers"]["id"]] += 1
    client.close()
    return found


def _committed(ids: Iterable[str]) -> set[str]:
    """Read on a connection opened for this read alone."""
    engine = sa.create_engine(get_settings().db_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(sa.select(Job.id).where(Job.id.in_(list(ids)))))
    finally:
        engine.dispose()


def test_concurrent_submissions_are_committed_and_sent_once(api_client: Any) -> None:
    pool, model = unique("pool"), _model()

    def submit(i: int) -> httpx.Response:
        if i % 4 == 3:
            body = {"model_name": model, "inputs": [ROW], "resources": {"pool": pool}}
            response: httpx.Response = api_client.post("/v1/jobs/predict", json=body)
        else:
            response = api_client.post("/v1/jobs/train", json=_train(pool))
        return response

    with ThreadPoolExecutor(20) as threads:
        answers = list(threads.map(submit, range(200)))

    assert [a.status_code for a in answers] == [201] * 200, {a.text for a in answers}
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 200
    assert {a.json()["state"] for a in answers} == {"queued"}
    assert all("no online worker serves it" in a.json()["message"] for a in answers)
    assert _committed(ids) == set(ids)
    assert _messages(get_settings().broker_url, pool) == Counter(ids)
    for answer in answers[:3]:
        job_id = answer.json()["id"]
        assert [e["kind"] for e in api_client.get(f"/v1/jobs/{job_id}/events").json()] == ["queued"]


def test_one_refused_submission_does_not_fail_its_neighbours(api_client: Any) -> None:
    pool, model = unique("pool"), _model()

    def submit(i: int) -> httpx.Response:
        name = model if i % 5 else unique("missing")
        body = {"model_name": name, "inputs": [ROW], "resources": {"pool": pool}}
        response: httpx.Response = api_client.post("/v1/jobs/predict", json=body)
        return response

    with ThreadPoolExecutor(10) as threads:
        answers = list(threads.map(submit, range(50)))
    assert Counter(a.status_code for a in answers) == {201: 40, 404: 10}
    assert {a.json()["field"] for a in answers if a.status_code == 404} == {"model_name"}
    made = [a.json()["id"] for a in answers if a.status_code == 201]
    assert _messages(get_settings().broker_url, pool) == Counter(made)


def test_the_same_idempotency_key_raced_makes_one_job(api_client: Any) -> None:
    body = _train(unique("pool"))
    key = {"Idempotency-Key": unique("race")}
    with ThreadPoolExecutor(20) as threads:
        answers = list(
            threads.map(
                lambda _: api_client.post("/v1/jobs/train", json=body, headers=key), range(20)
            )
        )
    assert sorted(a.status_code for a in answers) == [200] * 19 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    listed = api_client.get("/v1/jobs", params={"model_name": body["model_name"]}).json()
    assert listed["total"] == 1


@pytest.mark.slow
def test_submissions_while_the_broker_is_down_are_sent_by_the_reaper(
    api_client: Any, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = unique("pool")
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_caches()
    with ThreadPoolExecutor(10) as threads:
        answers = list(
            threads.map(lambda _: api_client.post("/v1/jobs/train", json=_train(pool)), range(20))
        )
    assert [a.status_code for a in answers] == [201] * 20
    assert all("waiting to be sent" in a.json()["message"] for a in answers)
    ids = [a.json()["id"] for a in answers]
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL", fleet.redis_url)
    reset_caches()
    assert _committed(ids) == set(ids)
    for job_id in ids[:3]:
        assert "waiting to be sent" in api_client.get(f"/v1/jobs/{job_id}").json()["message"]
    fleet.start("reaper")
    _until_sent(fleet.redis_url, pool, ids)


def _until_sent(url: str, pool: str, ids: list[str], timeout: float = 60) -> None:
    """Until every one of ``ids`` has its message in the broker, each exactly once."""
    deadline = time.monotonic() + timeout
    while set(found := _messages(url, pool)) < set(ids):
        assert time.monotonic() < deadline, f"{len(set(ids) - set(found))} jobs never sent"
        time.sleep(0.2)
    assert all(found[i] == 1 for i in ids), found


def _serve(port: int, log: Path) -> Any:
    proc = start_process(["api", "--port", str(port)], log)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


@pytest.mark.slow
def test_an_api_killed_mid_burst_loses_no_job_it_answered_for(fleet: Fleet, tmp_path: Path) -> None:
    pool, port = unique("pool"), free_port()
    proc = _serve(port, tmp_path / "api.log")
    answered: list[str] = []

    def submit(_: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as http:
            while True:
                try:
                    response = http.post("/v1/jobs/train", json=_train(pool))
                except httpx.TransportError:  # the process is gone
                    return
                assert response.status_code == 201, response.text
                answered.append(response.json()["id"])

    try:
        with ThreadPoolExecutor(16) as threads:
            for _ in range(16):
                threads.submit(submit, 0)
            deadline = time.monotonic() + 60
            while len(answered) < 150:
                assert time.monotonic() < deadline, "the API answered too few"
                time.sleep(0.01)
            processes.signal_group(proc, signal.SIGKILL)
            proc.wait()
    finally:
        processes.stop(proc)
    assert len(set(answered)) == len(answered) > 150
    assert _committed(answered) == set(answered)
    # And every job it committed, answered or not (killed between its commit and its
    # answer, or its send).
    with session_scope() as s:
        recorded = list(s.scalars(sa.select(Job.id).where(Job.queue.like(f"train.{pool}%"))))
    assert set(answered) <= set(recorded)
    fleet.start("reaper")
    _until_sent(fleet.redis_url, pool, recorded)
