"""The records of served predictions, written from a thread of their own: whatever a
worker's batches (``workers.batches``) finished in the last few milliseconds goes to the
database in one transaction, off the callers' path. One writer per process (``writer``);
a clean shutdown of the worker writes what is pending (``close_writer``)."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import Any

from shared.config import get_settings
from shared.db import jobs
from shared.db.session import UNREACHABLE, session_scope

log = logging.getLogger(__name__)


class ResultWriter:
    """Records finished predictions from a thread: whatever arrived in the last
    ``flush_seconds`` (or ``flush_rows`` rows, sooner) in one transaction. While the
    database is unreachable it keeps the records and tries again; ``close`` writes what
    is pending, and a clean shutdown of the worker calls it."""

    def __init__(self, flush_seconds: float, flush_rows: int) -> None:
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self._pending: list[dict[str, Any]] = []
        self._after: list[Callable[[], None]] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="result-writer", daemon=True)
        self._thread.start()

    def put(self, records: list[dict[str, Any]], after: Callable[[], None] | None = None) -> None:
        """Records to write; ``after`` is called once they are committed (in this thread,
        at once, when there are none)."""
        if not records:
            if after is not None:
                after()
            return
        with self._wake:
            if self._closing:
                raise RuntimeError("the result writer is closed")
            self._pending.extend(records)
            if after is not None:
                self._after.append(after)
            if len(self._pending) >= self.flush_rows:
                self._wake.notify()

    @property
    def pending(self) -> int:
        with self._wake:
            return len(self._pending)

    def _take(self) -> tuple[list[dict[str, Any]], list[Callable[[], None]]]:
        with self._wake:
            if not self._closing and len(self._pending) < self.flush_rows:
                self._wake.wait(self.flush_seconds)
            taken, self._pending = self._pending, []
            after, self._after = self._after, []
            return taken, after

    def _run(self) -> None:
        pause = 0.5
        while True:
            with self._wake:
                if self._closing and not self._pending:
                    return
            records, after = self._take()
            if not records:
                continue
            try:
                self._write(records)
                pause = 0.5
            except UNREACHABLE as exc:  # unreachable: keep them, try again
                log.warning("could not record %d predictions (%s); trying again", len(records), exc)
                with self._wake:
                    self._pending[:0] = records
                    self._after[:0] = after
                    self._wake.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            for done in after:
                try:
                    done()
                except Exception:
                    log.exception("after recording %d predictions", len(records))

    def _write(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), self.flush_rows):
            chunk = records[start : start + self.flush_rows]
            try:
                with session_scope() as s:
                    jobs.record_served(s, chunk)
            except UNREACHABLE:
                raise
            except Exception:  # a record the database refuses must not hold up the rest
                self._write_one_by_one(chunk)

    def _write_one_by_one(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                with session_scope() as s:
                    jobs.record_served(s, [record])
            except UNREACHABLE:
                raise
            except Exception:
                log.exception("the database refused the record of prediction %s", record["id"])

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is pending and stop; False if records remain after ``timeout``."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        left = self.pending
        if left:
            log.error("%d served predictions could not be recorded before shutdown", left)
        return left == 0


_writer: ResultWriter | None = None
_writer_lock = threading.Lock()


def writer() -> ResultWriter:
    global _writer
    with _writer_lock:
        if _writer is None:
            settings = get_settings()
            _writer = ResultWriter(settings.result_flush_ms / 1000, settings.result_flush_rows)
            atexit.register(close_writer)
        return _writer


def close_writer() -> None:
    """Write every pending record; called when the worker shuts down."""
    global _writer
    with _writer_lock:
        current, _writer = _writer, None
    if current is not None:
        current.close()
