"""Running one batch of sync predictions (a ``shared.schemas.ServeBatch``, coalesced by
``api.batcher``): resolve the version, check every request's inputs against it, run them
all in one forward pass, publish each caller's answer to the API process that waits for
it (``shared.notify``), then hand each request's record to the result writer
(``workers.result_writer``), which writes them off the callers' path.

The worker resolves the version (``latest`` or an alias, once per batch) and checks each
request against it. As on the job route, what is refused before it runs is answered and
not recorded: an unknown model, version or alias (404), inputs the version cannot take
(422, with the field). What fails while it runs is answered and recorded as a failed job:
data that turns out bad (a NaN in a tensor: 422, that request alone), a model that cannot
be loaded or a forward pass that fails (502, the whole batch). A message that is not a
batch is refused with a log line: its callers' waits run out, and their jobs, recorded as
waiting, are sent again as jobs by the reaper.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
import torch
from pydantic import ValidationError
from pydantic_core import to_json  # the answers' bodies: five times json.dumps's speed

from shared import notify
from shared.db import jobs, model_registry
from shared.db.session import UNREACHABLE, read_scope
from shared.errors import BadData, InvalidSpec, JobError, TorchqueueError, Unavailable
from shared.jobstate import JobState, now
from shared.schemas import BYTES_READ_LATER, ModelVersionOut, ServeBatch, ServeItem, Tensor
from shared.validation import check_inputs
from workers import inference, metrics
from workers.result_writer import writer

log = logging.getLogger(__name__)


def decode_batch(payload: object, message_id: str | None = None) -> ServeBatch | None:
    """The batch a serve message carries, or None (the reason logged) if it carries none.
    A tensor's bytes are not decoded here: ``workers.tensors.decode`` reads and checks
    them when the model's input is made."""
    try:
        return ServeBatch.model_validate(payload, context=BYTES_READ_LATER)
    except ValidationError as exc:
        log.error("refused serve message %s: not a batch of sync predictions: %s",
                  message_id, _reasons(exc))  # fmt: skip
        return None


def _reasons(exc: ValidationError, most: int = 3) -> str:
    """What was wrong, where: ``items.0.inputs: Input should be a valid list``. Field
    names only in the place (not the union members that pydantic names), each once."""
    reasons: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        where = [str(p) for p in error["loc"] if isinstance(p, int) or p.isidentifier()]
        reason = f"{'.'.join(where) or 'the message'}: {error['msg']}"
        if reason not in reasons:
            reasons.append(reason)
    more = f" (and {len(reasons) - most} more)" if len(reasons) > most else ""
    return "; ".join(reasons[:most]) + more


def _refusal(error: TorchqueueError) -> bytes:
    """The answer to a request refused before it ran: not recorded, so it names no job
    (there is none to look up)."""
    return json.dumps(error.to_dict()).encode()


class _Run:
    """One batch on its way: the answers for the callers, then the records for the
    database (made after the answers are published: the callers do not wait for them)."""

    def __init__(
        self, batch: ServeBatch, version: int, worker: str, after: Callable[[], None] | None
    ) -> None:
        self.batch, self.version, self.worker, self.after = batch, version, worker, after
        self.started, self.clock = now(), time.perf_counter()
        self.answers: list[tuple[str, int, bytes]] = []
        self.ended: list[tuple[ServeItem, JobState, datetime, str, dict[str, Any]]] = []

    def fail(self, item: ServeItem, status: int, type_: str, detail: str) -> None:
        body: dict[str, Any] = {"type": type_, "detail": detail, "job_id": item.id}
        error: dict[str, Any] = {"type": type_, "detail": detail}
        if status == 422:
            body["field"] = error["field"] = "inputs"
        self.answers.append((item.id, status, json.dumps(body).encode()))
        self.ended.append((item, JobState.failed, now(), detail, {"error": error}))

    def succeed(self, item: ServeItem, outputs: Any, classes: Any, usage: dict[str, Any]) -> None:
        answer = {"job_id": item.id, "model_name": self.batch.model,
                  "model_version": self.version, "outputs": outputs}  # fmt: skip
        if item.outputs == "tensor":
            answer["classes"] = classes
        self.answers.append((item.id, 200, to_json(answer)))
        del answer["job_id"]
        message = f"{usage['samples']} outputs, in a batch of {usage['batch_rows']} rows"
        self.ended.append(
            (item, JobState.succeeded, now(), message, {"result": answer, "usage": usage})
        )

    def records(self) -> list[dict[str, Any]]:
        return [
            jobs.served_record(
                item,
                state,
                model=self.batch.model,
                version=self.version,
                queue=self.batch.queue,
                stamp=stamp,
                message=message,
                worker=self.worker,
                started=self.started,
                **outcome,
            )
            for item, state, stamp, message, outcome in self.ended
        ]


# One batch at a time in a worker, whichever way it came (Celery's serve task or the
# direct consumer): concurrent forward passes on the same cores only slow each other.
_one_at_a_time = threading.Lock()


def run_batch(batch: ServeBatch, worker: str, after: Callable[[], None] | None = None) -> None:
    """Answer and record every request of a batch; ``after`` is called once its records
    are committed (at once when it has none)."""
    with _one_at_a_time:
        _run_batch(batch, worker, after)


def _run_batch(batch: ServeBatch, worker: str, after: Callable[[], None] | None) -> None:
    try:
        version = _resolve(batch.model, batch.version)
    except TorchqueueError as exc:  # no such model or version, or no database: no job ran
        _publish(batch, [(i.id, exc.status, _refusal(exc)) for i in batch.items])
        if after is not None:
            after()
        return
    run = _Run(batch, version.version, worker, after)
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
    checked: list[ServeItem] = []
    for item in batch.items:
        try:
            # As the API checks a request before it records a job; a tensor's shape is
            # checked here and its bytes when they are read, once.
            check_inputs(item.inputs, version.input_schema)
            checked.append(item)
        except InvalidSpec as exc:  # refused before it ran, as the job route does
            run.answers.append((item.id, exc.status, _refusal(exc)))
    ready = _encoded(run, model, checked)
    if ready:
        _forward(run, model, ready)
    _finish(run)


def _encoded(run: _Run, model: Any, items: list[ServeItem]) -> list[tuple[ServeItem, torch.Tensor]]:
    """Each request's inputs as the model's input: the feature rows of all of them in one
    go where the model allows it, the rest one by one (bad data fails its request alone)."""
    rows = [i for i in items if isinstance(i.inputs, list)] if len(items) > 1 else []
    together = model.encode_rows([i.inputs for i in rows]) if rows else None
    ready = dict(zip((i.id for i in rows), together, strict=True)) if together else {}
    out: list[tuple[ServeItem, torch.Tensor]] = []
    for item in items:
        if (x := ready.get(item.id)) is not None:
            out.append((item, x))
            continue
        inputs = item.inputs.model_dump() if isinstance(item.inputs, Tensor) else item.inputs
        try:
            out.append((item, model.encode(inputs)))
        except BadData as exc:
            run.fail(item, 422, exc.type, exc.detail)
    return out


# Versions are immutable: a number, once read, is kept (``latest`` and aliases, which
# move, are read every batch).
_versions: dict[tuple[str, int], ModelVersionOut] = {}


def _resolve(model: str, version: int | str) -> ModelVersionOut:
    try:
        with read_scope() as s:
            if isinstance(version, str):  # one indexed lookup; the version's row is kept
                version = model_registry.version_number(s, model, version) or version
            if isinstance(version, int) and (model, version) in _versions:
                return _versions[(model, version)]
            found = model_registry.get_model_version(s, model, version)
    except UNREACHABLE as exc:
        raise Unavailable(f"the database cannot be reached: {exc}") from None
    if len(_versions) > 1000:
        _versions.clear()
    _versions[(model, found.version)] = found
    return found


def _forward(run: _Run, model: Any, ready: list[tuple[ServeItem, torch.Tensor]]) -> None:
    """The batch's inputs in one pass per shape of their rows (one, for inputs checked
    against one version; a family whose encoding varies in shape gets a pass per shape),
    each caller's rows of the outputs back."""
    shapes: dict[tuple[int, ...], list[tuple[ServeItem, torch.Tensor]]] = {}
    for item, x in ready:
        shapes.setdefault(tuple(x.shape[1:]), []).append((item, x))
    for same in shapes.values():
        _forward_one(run, model, same)


def _forward_one(run: _Run, model: Any, ready: list[tuple[ServeItem, torch.Tensor]]) -> None:
    x = torch.cat([x for _, x in ready])
    try:
        out = inference.forward(model, x)
    except Exception as exc:
        log.exception("a batch of %s v%d failed", run.batch.model, run.version)
        for item, _ in ready:
            run.fail(item, 502, "internal_error", f"the forward pass failed: {exc}")
        return
    metrics.rows_answered(len(x))
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
    writer().put(run.records(), after=run.after)


def _publish(batch: ServeBatch, answers: list[tuple[str, int, bytes]]) -> None:
    try:
        notify.publish(batch.reply, notify.encode_reply(answers))
    except redis.RedisError as exc:
        # The callers' waits run out, and they find the jobs in the database.
        log.warning("could not publish the answers of %d requests: %s", len(answers), exc)
