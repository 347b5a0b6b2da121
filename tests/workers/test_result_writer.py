"""The writer of served predictions keeps what it cannot write, and writes it later."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from shared.config import get_settings
from shared.db import job_reads, jobs
from shared.db.session import session_scope
from shared.errors import NotFound
from shared.jobstate import JobState, now
from shared.schemas import ServeItem
from workers.result_writer import ResultWriter


def _records(n: int) -> list[dict[str, Any]]:
    items = [
        ServeItem(id=str(uuid.uuid4()), inputs=[[1.0, 2.0]], outputs="json", by=None, at=now())
        for _ in range(n)
    ]
    return [
        jobs.served_record(item, JobState.succeeded, model="written", version=1,
                           queue="predict.default", stamp=now(), message="1 outputs",
                           worker="w", started=now(), result={"outputs": [{"value": 1.0}]})
        for item in items
    ]  # fmt: skip


def _recorded(job_id: str) -> bool:
    try:
        with session_scope() as s:
            return job_reads.get_job(s, job_id).state is JobState.succeeded
    except NotFound:
        return False


def test_records_wait_out_a_database_outage(setting: Callable[[str, str], None]) -> None:
    records = _records(5)
    reachable = get_settings().db_url
    writer = ResultWriter(flush_seconds=0.05, flush_rows=100)
    try:
        setting("TORCHQUEUE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
        writer.put(records)
        time.sleep(1.0)  # several tries, every one refused
        assert writer.pending == 5
        setting("TORCHQUEUE_DATABASE_URL", reachable)
        deadline = time.monotonic() + 30
        while writer.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.pending == 0
    finally:
        assert writer.close(timeout=30)
    assert all(_recorded(r["id"]) for r in records)


def test_close_writes_what_is_pending() -> None:
    records = _records(3)
    writer = ResultWriter(flush_seconds=60, flush_rows=100)  # would wait a minute
    writer.put(records)
    assert writer.close(timeout=30)
    assert all(_recorded(r["id"]) for r in records)
