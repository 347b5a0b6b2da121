"""Worker and reaper processes started for one test, on a Redis of their own, with short
leases and heartbeats, and helpers to wait for what they do."""

from __future__ import annotations

import signal
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from api.client import Client
from ops import embedded_redis
from shared import processes
from shared.jobstate import TERMINAL
from tests.helpers import (
    fresh_database,
    reset_caches,
    start_process,
    unique,
    wait_for_worker,
    wait_job,
)

FAST_LEASES = {
    "TORCHQUEUE_LEASE_SECONDS": "2",
    "TORCHQUEUE_HEARTBEAT_SECONDS": "0.3",
    "TORCHQUEUE_REAPER_INTERVAL_SECONDS": "0.3",
    "TORCHQUEUE_RESEND_AFTER_SECONDS": "1",
    "TORCHQUEUE_WORKER_HEARTBEAT_SECONDS": "0.3",
    "TORCHQUEUE_WORKER_OFFLINE_AFTER_SECONDS": "2",
}


@dataclass
class Fleet:
    """Worker and reaper processes on a Redis of their own, with short leases."""

    logs: Path
    redis_url: str
    procs: list[Any] = field(default_factory=list)

    def start(self, *argv: str) -> Any:
        proc = start_process(list(argv), self.logs / f"{argv[0]}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def worker(self, *argv: str, name: str = "cpu@", env: dict[str, str] | None = None) -> Any:
        """Start `torchqueue worker ARGV` (default --cpu); wait until ``name`` answers."""
        args = list(argv) or ["--cpu"]
        log = self.logs / f"worker-{len(self.procs)}.log"
        proc = start_process(["worker", *args], log, env)
        self.procs.append(proc)
        wait_for_worker(name)
        return proc

    def kill9(self, proc: Any) -> float:
        """SIGKILL the whole process group (the Celery parent and its child)."""
        processes.signal_group(proc, signal.SIGKILL)
        proc.wait()
        return time.monotonic()

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """A Redis and a database of the fleet's own: the reaper re-sends every stale queued
    job it finds, and other tests leave plenty of those behind."""
    redis_proc, url = embedded_redis.start(tmp_path / "redis")
    db_url, remove_database = fresh_database(tmp_path)
    env = {**FAST_LEASES, "TORCHQUEUE_REDIS_URL": url, "TORCHQUEUE_DATABASE_URL": db_url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_caches()
    logs = tmp_path / "logs"
    logs.mkdir()
    f = Fleet(logs, url)
    try:
        yield f
    finally:
        for proc in f.procs:
            processes.stop(proc, timeout=5)
        redis_proc.kill()
        redis_proc.wait()
        monkeypatch.undo()
        reset_caches()
        remove_database()


def wait(
    client: Any,
    job_id: str,
    until: Collection[str] = TERMINAL,
    timeout: float = 90,
    attempts: int = 0,
) -> Any:
    """Until the job is in one of ``until`` (after at least ``attempts`` claims)."""
    return wait_job(client, job_id, timeout, until=until, attempts=attempts, poll=0.05)


def wait_epoch(client: Any, job_id: str, epoch: int, timeout: float = 60) -> None:
    """Until the job's progress shows ``epoch``."""

    def reached(job: dict[str, Any]) -> bool:
        return bool((job["progress"] or {}).get("epoch", 0) >= epoch)

    job = Client(http=client).wait(job_id, timeout=timeout, poll=0.05, until=reached)
    if not reached(job):
        raise TimeoutError(f"job {job_id} never reached epoch {epoch}: it is {job['state']}")


def events(client: Any, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/events").json()
    return found


def waiting_messages(client: redis.Redis) -> int:
    """Messages in the training queues, at every priority."""
    return sum(client.llen(key) for key in client.scan_iter(match="train*", _type="list"))


def trained_model(client: Any, prefix: str) -> str:
    """The name of a new mlp trained on iris by the fleet's workers (succeeded)."""
    name = unique(prefix)
    body = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"}}
    job = client.post("/v1/jobs/train", json=body).json()
    assert wait(client, job["id"])["state"] == "succeeded"
    return name
