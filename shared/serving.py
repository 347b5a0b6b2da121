"""Sync predictions between the API and the prediction workers.

The API coalesces concurrent requests for one model version into one batch message
(``send_batch``); a worker runs the batch as one forward pass and publishes the answer
of every request on the reply channel of the API process that waits for it
(``encode_reply``), then records each request as a finished prediction job
(``job_record``), in batched writes. The answers carry the final response bodies, so
the API passes them on without reading or re-encoding them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from shared.celery_app import create_celery
from shared.config import get_settings
from shared.constants import JOBS_HEADER, TASK_SERVE
from shared.enqueue import RETRY
from shared.errors import Unavailable
from shared.jobstate import JobKind, JobState
from shared.routing import broker_priority

# A sync prediction waits in front of everything else in its queue.
SERVE_PRIORITY = 9


@dataclass
class Item:
    """One request of a batch: its job id, inputs (a list, or a typed tensor as a dict),
    the output format, the key that sent it and when."""

    id: str
    inputs: list[Any] | dict[str, Any]
    outputs: str
    by: str | None
    at: str  # ISO 8601, when the API received it

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "inputs": self.inputs, "outputs": self.outputs, "by": self.by,
                "at": self.at}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        return cls(data["id"], data["inputs"], data["outputs"], data.get("by"), data["at"])


@dataclass
class Batch:
    """What a serve message carries: a model, the version asked for (a number, or
    ``latest``, which the worker resolves when it runs the batch), and its requests."""

    model: str
    version: int | str
    queue: str
    reply: str  # the channel of the API process that waits
    items: list[Item]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "queue": self.queue,
            "reply": self.reply,
            "items": [i.to_json() for i in self.items],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        return cls(
            data["model"],
            data["version"],
            data["queue"],
            data["reply"],
            [Item.from_json(i) for i in data["items"]],
        )


@lru_cache(maxsize=4)
def _sender(broker_url: str) -> Celery:
    """The app that sends batches: without Celery's ``task-sent`` event, which would cost
    a second message for each batch (the worker's events still show it in Flower)."""
    app = create_celery(get_settings())
    app.conf.task_send_sent_event = False
    return app


def send_batch(batch: Batch, batch_id: str) -> None:
    """Send a batch to its queue; the header lists its jobs, so that the reaper knows the
    broker holds them. Raises ``Unavailable`` when the broker cannot take it."""
    ids = [i.id for i in batch.items]
    try:
        _sender(get_settings().broker_url).send_task(
            TASK_SERVE,
            args=[batch.to_json()],
            task_id=batch_id,
            queue=batch.queue,
            priority=broker_priority(SERVE_PRIORITY),
            headers={JOBS_HEADER: ids},
            argsrepr=f"[{len(ids)} requests]",
            kwargsrepr=repr({"model": batch.model, "version": batch.version}),
            retry=True,
            retry_policy=RETRY,
        )
    except (BrokerError, OSError) as exc:
        raise Unavailable(f"the broker cannot be reached: {exc}") from None


# --- replies: a JSON line of (job id, HTTP status, body length), then the bodies --------


def encode_reply(answers: list[tuple[str, int, bytes]]) -> bytes:
    head = json.dumps([[job_id, status, len(body)] for job_id, status, body in answers])
    return b"".join([head.encode(), b"\n", *(body for _, _, body in answers)])


def decode_reply(data: bytes) -> list[tuple[str, int, bytes]]:
    head, _, rest = data.partition(b"\n")
    answers, offset = [], 0
    for job_id, status, length in json.loads(head):
        answers.append((str(job_id), int(status), rest[offset : offset + length]))
        offset += length
    return answers


# --- the job rows that record sync predictions -----------------------------------------


def job_record(
    batch: Batch,
    item: Item,
    state: JobState,
    *,
    stamp: datetime,
    message: str,
    worker: str | None = None,
    started: datetime | None = None,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``jobs`` row of one request (``batch.version`` resolved): column → value."""
    spec = {"model_name": batch.model, "version": batch.version, "inputs": item.inputs,
            "outputs": item.outputs}  # fmt: skip
    finished = state.is_terminal()
    return {
        "id": item.id,
        "kind": JobKind.predict,
        "state": state,
        "model_name": batch.model,
        "model_version": batch.version,
        "spec": spec,
        "queue": batch.queue,
        "progress": None,
        "result": result,
        "error": error,
        "attempts": 1 if finished else 0,
        "max_attempts": 3,
        "priority": SERVE_PRIORITY,
        "usage": usage,
        "worker": worker,
        "message": message,
        "submitted_by": item.by,
        "created_at": datetime.fromisoformat(item.at),
        "updated_at": stamp,
        "started_at": started,
        "finished_at": stamp if finished else None,
    }
