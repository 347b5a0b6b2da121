"""Running a batch of sync predictions (``shared.serving``): every request's inputs in one
forward pass, each caller's answer published to the API process that waits for it, and
every request recorded as a finished prediction job by a writer thread, in batched
transactions that stay off the callers' path.

The worker resolves the version (``latest`` once per batch) and checks each request
against it. As on the job route, what is refused before it runs is answered and not
recorded: an unknown model or version (404), inputs the version cannot take (422, with
the field). What fails while it runs is answered and recorded as a failed job: data that
turns out bad (a NaN in a tensor: 422, that request alone), a model that cannot be loaded
or a forward pass that fails (502, the whole batch).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import threading
import time
from typing import Any

import redis
import torch

from shared import notify
from shared.config import get_settings
from shared.db import jobs, model_registry
from shared.db.session import UNREACHABLE, read_scope, session_scope
from shared.errors import BadData, InvalidSpec, JobError, TorchqueueError, Unavailable
from shared.jobstate import JobState, now
from shared.schemas import ModelVersionOut
from shared.serving import Batch, Item, encode_reply, job_record
from shared.validation import check_inputs, check_tensor_shape
from workers import inference

log = logging.getLogger(__name__)


def _error_body(item: Item, error: TorchqueueError) -> bytes:
    return json.dumps({**error.to_dict(), "job_id": item.id}).encode()


class _Run:
    """One batch on its way: the answers for the callers, the records for the database."""

    def __init__(self, batch: Batch, worker: str) -> None:
        self.batch, self.worker = batch, worker
        self.started, self.clock = now(), time.perf_counter()
        self.answers: list[tuple[str, int, bytes]] = []
        self.records: list[dict[str, Any]] = []

    def fail(self, item: Item, status: int, type_: str, detail: str) -> None:
        body = {"type": type_, "detail": detail, "job_id": item.id}
        if status == 422:
            body["field"] = "inputs"
        self.answers.append((item.id, status, json.dumps(body).encode()))
        self.records.append(
            job_record(self.batch, item, JobState.failed, stamp=now(), message=detail,
                       worker=self.worker, started=self.started,
                       error={"type": type_, "message": detail})
        )  # fmt: skip

    def succeed(self, item: Item, outputs: Any, classes: Any, usage: dict[str, Any]) -> None:
        batch = self.batch
        answer = {"job_id": item.id, "model_name": batch.model, "model_version": batch.version,
                  "outputs": outputs}  # fmt: skip
        if item.outputs == "tensor":
            answer["classes"] = classes
        self.answers.append((item.id, 200, json.dumps(answer).encode()))
        del answer["job_id"]
        self.records.append(
            job_record(batch, item, JobState.succeeded, stamp=now(), worker=self.worker,
                       started=self.started, result=answer, usage=usage,
                       message=f"{usage['samples']} outputs, in a batch of "
                       f"{usage['batch_rows']} rows")
        )  # fmt: skip


def run_batch(payload: dict[str, Any], worker: str) -> None:
    """Answer and record every request of a batch message."""
    batch = Batch.from_json(payload)
    try:
        version = _resolve(batch.model, batch.version)
    except TorchqueueError as exc:  # no such model or version, or no database: no job ran
        _publish(batch, [(i.id, exc.status, _error_body(i, exc)) for i in batch.items])
        return
    batch = dataclasses.replace(batch, version=version.version)
    run = _Run(batch, worker)
    try:
        model = inference.get_model(version)
    except Exception as exc:
        detail = exc.detail if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
        type_ = exc.type if isinstance(exc, JobError) else "internal_error"
        log.error("cannot serve %s v%d: %s", batch.model, version.version, detail)
        for item in batch.items:
            run.fail(item, 502, type_, f"the model could not be loaded: {detail}")
        _finish(run)
        return
    ready: list[tuple[Item, torch.Tensor]] = []
    for item in batch.items:
        try:
            _check(item.inputs, version.input_schema)
            ready.append((item, model.encode(item.inputs)))
        except InvalidSpec as exc:  # refused before it ran, as the job route does
            run.answers.append((item.id, exc.status, _error_body(item, exc)))
        except BadData as exc:
            run.fail(item, 422, exc.type, exc.detail)
    if ready:
        _forward(run, model, ready)
    _finish(run)


def _check(inputs: list[Any] | dict[str, Any], input_schema: dict[str, Any]) -> None:
    """Check a request against the version, as the API does before it records a job. A
    tensor's shape is checked here and its bytes when they are read (the API checked
    them already; reading them twice would double the cost of a large request)."""
    if isinstance(inputs, dict):
        check_tensor_shape(inputs.get("shape"), input_schema)
    else:
        check_inputs(inputs, input_schema)


# Versions are immutable: a number, once read, is kept (``latest`` is read every batch).
_versions: dict[tuple[str, int], ModelVersionOut] = {}


def _resolve(model: str, version: int | str) -> ModelVersionOut:
    try:
        with read_scope() as s:
            if version == "latest":  # one indexed lookup; the version's row is kept
                version = model_registry.latest_version(s, model) or "latest"
            if isinstance(version, int) and (model, version) in _versions:
                return _versions[(model, version)]
            found = model_registry.get_model_version(s, model, version)
    except UNREACHABLE as exc:
        raise Unavailable(f"the database cannot be reached: {exc}") from None
    if len(_versions) > 1000:
        _versions.clear()
    _versions[(model, found.version)] = found
    return found


def _forward(run: _Run, model: Any, ready: list[tuple[Item, torch.Tensor]]) -> None:
    """All the batch's inputs in one pass; each caller's rows of the outputs back."""
    x = torch.cat([x for _, x in ready])
    try:
        out = inference.forward(model, x)
    except Exception as exc:
        log.exception("a batch of %s v%d failed", run.batch.model, run.batch.version)
        for item, _ in ready:
            run.fail(item, 502, "internal_error", f"the forward pass failed: {exc}")
        return
    usage = {"wall_seconds": time.perf_counter() - run.clock,
             "batch_requests": len(run.batch.items), "batch_rows": len(x)}  # fmt: skip
    offset = 0
    for item, xi in ready:
        outputs = model.output(out[offset : offset + len(xi)], item.outputs)
        offset += len(xi)
        run.succeed(item, outputs, model.classes, {**usage, "samples": len(xi)})


def _finish(run: _Run) -> None:
    """Answer first, record after: the callers do not wait for the database."""
    _publish(run.batch, run.answers)
    writer().put(run.records)


def _publish(batch: Batch, answers: list[tuple[str, int, bytes]]) -> None:
    try:
        notify.publish(batch.reply, encode_reply(answers))
    except redis.RedisError as exc:
        # The callers' waits run out, and they find the jobs in the database.
        log.warning("could not publish the answers of %d requests: %s", len(answers), exc)


class ResultWriter:
    """Records finished predictions from a thread: whatever arrived in the last
    ``flush_seconds`` (or ``flush_rows`` rows, sooner) in one transaction. While the
    database is unreachable it keeps the records and tries again; ``close`` writes what
    is pending, and a clean shutdown of the worker calls it."""

    def __init__(self, flush_seconds: float, flush_rows: int) -> None:
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self._pending: list[dict[str, Any]] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="result-writer", daemon=True)
        self._thread.start()

    def put(self, records: list[dict[str, Any]]) -> None:
        with self._wake:
            if self._closing:
                raise RuntimeError("the result writer is closed")
            self._pending.extend(records)
            if len(self._pending) >= self.flush_rows:
                self._wake.notify()

    @property
    def pending(self) -> int:
        with self._wake:
            return len(self._pending)

    def _take(self) -> list[dict[str, Any]]:
        with self._wake:
            if not self._closing and len(self._pending) < self.flush_rows:
                self._wake.wait(self.flush_seconds)
            taken, self._pending = self._pending, []
            return taken

    def _run(self) -> None:
        pause = 0.5
        while True:
            with self._wake:
                if self._closing and not self._pending:
                    return
            records = self._take()
            if not records:
                continue
            try:
                self._write(records)
                pause = 0.5
            except UNREACHABLE as exc:  # unreachable: keep them, try again
                log.warning("could not record %d predictions (%s); trying again", len(records), exc)
                with self._wake:
                    self._pending[:0] = records
                    self._wake.wait(pause)
                pause = min(pause * 2, 10.0)

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
