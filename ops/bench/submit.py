"""Submissions: a burst of tiny training jobs (an mlp on the built-in iris, one epoch; then
fewer with 20 rows of inline data, which each store a data set version) from many clients
at once, accepted/s and
latency beside the same clients against ``GET /healthz`` (the floor of an HTTP answer from
the same process), then whether every job ran exactly once; and queue-to-start for an
idle worker (the job row's ``created_at`` to ``started_at``, one submission at a time).

    .venv/bin/python -m ops.bench.submit

It starts its own embedded Redis, database, API and CPU training worker in a temporary
home, and stops them: on SQLite, then on PostgreSQL when ``TORCHQUEUE_BENCH_POSTGRES_URL``
is set (a server URL such as postgresql+psycopg://postgres@127.0.0.1:5432/test; the bench
makes its own database ``bench`` beside it, afresh each run). The worker is paused
(SIGSTOP) during the burst, so that the figures are the API's, not the API's share of two
cores with a training worker; it drains the jobs afterwards.
``rows(...)`` gives the figures as rows of ``ops.bench.suite``'s table.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from datetime import datetime
from typing import Any

import httpx

from ops.bench import load
from ops.bench.system import System

CLIENTS = 50
JOBS = 1000
# Jobs whose 20 rows come with them, each stored as a data set version of its own.
INLINE_JOBS = 250
SEQUENTIAL = 20
# How long a worker has been without a job when the next one is sent, for queue-to-start.
IDLE_SECONDS = 0.5
BENCH_DATABASE = "bench"
JSON = {"Content-Type": "application/json"}


def _body(model: str, inline: bool = False) -> bytes:
    """A tiny training job: an mlp for one epoch, on the built-in iris, or on 20 rows
    sent with it (stored as a data set version of their own before the job is)."""
    dataset: dict[str, Any] = {"builtin": "iris"}
    if inline:
        inputs = [[round((i * 7 % 11) / 10, 2), round((i * 3 % 5) / 4, 2)] for i in range(20)]
        dataset = {"inline": {"inputs": inputs, "labels": [i % 2 for i in range(20)]}}
    body = {"model_name": model, "family": "mlp", "dataset": dataset, "training": {"epochs": 1}}
    return json.dumps(body).encode()


def _postgres(server_url: str) -> str:
    """The bench's own database beside ``server_url``'s, made afresh; its URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
    admin.dispose()
    url = sa.make_url(server_url).set(database=BENCH_DATABASE)
    return url.render_as_string(hide_password=False)


def _use_database(url: str) -> None:
    from shared.celery_app import get_celery
    from shared.config import get_settings
    from shared.db.migrate import upgrade

    os.environ["TORCHQUEUE_DATABASE_URL"] = url
    get_settings.cache_clear()
    get_celery.cache_clear()
    upgrade(url)


def _ran_once(ids: list[str], timeout: float = 900) -> tuple[int, float]:
    """Wait until every job ended; how many succeeded having run exactly once (one claim,
    one attempt, one model version), and the seconds the wait took."""
    import sqlalchemy as sa

    from shared.db.models import Job, JobEvent, ModelVersion
    from shared.db.session import session_scope
    from shared.jobstate import TERMINAL, JobEventKind, JobState

    started = time.monotonic()
    ended = sa.select(sa.func.count()).where(Job.id.in_(ids), Job.state.in_(sorted(TERMINAL)))
    while True:
        with session_scope() as s:
            if (s.scalar(ended) or 0) >= len(ids):
                break
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the jobs did not all end within {timeout} s")
        time.sleep(0.5)
    waited = time.monotonic() - started
    with session_scope() as s:
        good = set(
            s.scalars(
                sa.select(Job.id).where(
                    Job.id.in_(ids), Job.state == JobState.succeeded, Job.attempts == 1
                )
            )
        )
        claims = dict(
            s.execute(
                sa.select(JobEvent.job_id, sa.func.count())
                .where(JobEvent.job_id.in_(ids), JobEvent.kind == JobEventKind.claimed)
                .group_by(JobEvent.job_id)
            ).all()
        )
        versions = dict(
            s.execute(
                sa.select(ModelVersion.job_id, sa.func.count())
                .where(ModelVersion.job_id.in_(ids))
                .group_by(ModelVersion.job_id)
            ).all()
        )
    once = sum(1 for i in good if claims.get(i) == 1 and versions.get(i) == 1)
    return once, waited


def _queue_to_start(client: httpx.Client, body: bytes, n: int) -> list[float]:
    """Seconds from submitted to running, one job at a time on an idle worker: one that
    ended its last job a moment ago (a job sent while the last one's process is still
    tidying up after it waits for that, which is not the queue's time)."""
    from api.client import Client

    waits = []
    for _ in range(n + 2):  # the first two take the worker's one-off costs
        time.sleep(IDLE_SECONDS)
        answer = client.post("/v1/jobs/train", content=body, headers=JSON)
        if answer.status_code != 201:
            raise RuntimeError(f"the job was refused: {answer.text}")
        job = Client(http=client).wait(answer.json()["id"], timeout=120, poll=0.05)
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['state']}: {job.get('error')}")
        created = datetime.fromisoformat(job["created_at"])
        waits.append((datetime.fromisoformat(job["started_at"]) - created).total_seconds())
    return waits[2:]


def measure(
    database_url: str | None = None, jobs: int = JOBS, inline_jobs: int = INLINE_JOBS
) -> dict[str, Any]:
    """The figures on SQLite, or on the PostgreSQL database ``database_url``: ``jobs``
    from CLIENTS clients, then ``inline_jobs`` with their own data."""
    system = System()
    try:
        system.base()
        if database_url is not None:
            _use_database(database_url)
        system.api()
        system.worker("--queues", "train")
        worker = system.procs[-1]
        deadline = time.monotonic() + 60
        while not system.api_ready():
            system.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not start; logs in {system.home}")
            time.sleep(0.3)
        with httpx.Client(base_url=system.api_url, timeout=120) as client:
            q2s = _queue_to_start(client, _body("bench-q2s"), SEQUENTIAL)
        train_url = f"{system.api_url}/v1/jobs/train"
        # Warm: the API's connections, and its code paths, before anything is timed.
        load.burst(train_url, CLIENTS, 2, body=_body("bench-warm"), expect=(201,))
        load.burst(f"{system.api_url}/healthz", CLIENTS, 4)
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            floor, _ = load.burst(f"{system.api_url}/healthz", CLIENTS, jobs // CLIENTS)
            burst, answers = load.burst(
                train_url, CLIENTS, jobs // CLIENTS, body=_body("bench-burst"), expect=(201,)
            )
            inline, more = load.burst(
                train_url, CLIENTS, inline_jobs // CLIENTS, body=_body("bench-inline", True),
                expect=(201,),
            )  # fmt: skip
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        ids = [json.loads(a)["id"] for a in answers]
        inline_ids = [json.loads(a)["id"] for a in more]
        once, drained = _ran_once(ids)
        inline_once, _ = _ran_once(inline_ids)
    finally:
        system.stop()
    return {
        "database": "PostgreSQL" if database_url else "SQLite",
        "jobs": len(ids),
        "distinct_ids": len(set(ids)),
        "accepted_per_s": burst.throughput,
        "p50_ms": burst.pct(50),
        "p99_ms": burst.pct(99),
        "p999_ms": burst.pct(99.9),
        "slowest_ms": burst.slowest,
        "healthz_per_s": floor.throughput,
        "healthz_p50_ms": floor.pct(50),
        "healthz_p99_ms": floor.pct(99),
        "healthz_p999_ms": floor.pct(99.9),
        "healthz_slowest_ms": floor.slowest,
        "ran_once": once,
        "inline_jobs": len(inline_ids),
        "inline_per_s": inline.throughput,
        "inline_p99_ms": inline.pct(99),
        "inline_ran_once": inline_once,
        "drain_s": drained,
        "queue_to_start_p50_ms": statistics.median(q2s) * 1000,
        "queue_to_start_max_ms": max(q2s) * 1000,
    }


def rows(figures: dict[str, Any]) -> list[Any]:
    """The figures as rows of ``ops.bench.suite``'s table."""
    from ops.bench.suite import Row

    sec = f"7 submissions, {figures['database']}"
    who = f"{figures['jobs']:,} jobs, {CLIENTS} clients"
    floor = f"GET /healthz, {CLIENTS} clients"
    return [
        Row(sec, f"{who}: accepted/s", figures["accepted_per_s"], "jobs/s", floor,
            figures["healthz_per_s"]),
        Row(sec, f"{who}: accepted/s (absolute)", figures["accepted_per_s"], "jobs/s", "-",
            0.0, goal=(">=", 1000)),
        Row(sec, f"{who}: p50", figures["p50_ms"], "ms", floor, figures["healthz_p50_ms"]),
        Row(sec, f"{who}: p99", figures["p99_ms"], "ms", floor, figures["healthz_p99_ms"]),
        Row(sec, f"{who}: p99 (absolute)", figures["p99_ms"], "ms", "-", 0.0,
            goal=("<=", 100)),
        Row(sec, f"{who}: p99.9", figures["p999_ms"], "ms", floor, figures["healthz_p999_ms"]),
        Row(sec, f"{who}: slowest", figures["slowest_ms"], "ms", floor,
            figures["healthz_slowest_ms"]),
        Row(sec, f"{who}: ran exactly once", figures["ran_once"], "jobs", "-", 0.0,
            goal=(">=", figures["jobs"])),
        Row(sec, f"{figures['inline_jobs']} inline-data jobs: accepted/s",
            figures["inline_per_s"], "jobs/s", floor, figures["healthz_per_s"]),
        Row(sec, f"{figures['inline_jobs']} inline-data jobs: p99", figures["inline_p99_ms"],
            "ms", floor, figures["healthz_p99_ms"]),
        Row(sec, f"{figures['inline_jobs']} inline-data jobs: ran exactly once",
            figures["inline_ran_once"], "jobs", "-", 0.0, goal=(">=", figures["inline_jobs"])),
        Row(sec, "queue-to-start p50, idle worker", figures["queue_to_start_p50_ms"], "ms",
            "-", 0.0, goal=("<=", 10)),
    ]  # fmt: skip


def all_rows(jobs: int = JOBS, inline_jobs: int = INLINE_JOBS) -> list[Any]:
    """On SQLite, then on PostgreSQL when TORCHQUEUE_BENCH_POSTGRES_URL names a server."""
    table = rows(measure(None, jobs, inline_jobs))
    if server := os.environ.get("TORCHQUEUE_BENCH_POSTGRES_URL"):
        table += rows(measure(_postgres(server), jobs, inline_jobs))
    return table


def main() -> None:
    from ops.bench.suite import render

    print(render(all_rows()))


if __name__ == "__main__":
    main()
