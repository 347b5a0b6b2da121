"""Sending messages by task name: the sender holds no task code. ``send_job`` sends a
recorded job (the API when a job is submitted, the reaper when a job must be sent again),
``send_jobs`` many at once (the API's group commit, ``api.submitter``);
``send_batch`` sends a batch of sync predictions that the API coalesced
(``api.batcher``) as a Celery task, and ``direct_message`` is such a batch as it waits in
a direct list (``workers.direct``). All give up after the same few quick tries."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache

from celery import Celery
from kombu.exceptions import BatchPublishError
from kombu.exceptions import OperationalError as BrokerError

from shared.celery_app import create_celery, get_celery
from shared.config import get_settings
from shared.constants import (
    JOB_FIRST_HEADER,
    JOBS_HEADER,
    QUEUE_WEBHOOKS,
    TASK_DELIVER,
    TASK_PREDICT,
    TASK_SERVE,
    TASK_TRAIN,
)
from shared.errors import Unavailable
from shared.jobstate import JobKind
from shared.routing import SERVE_PRIORITY, broker_priority
from shared.schemas import JobOut, ServeBatch

log = logging.getLogger(__name__)

TASKS = {JobKind.train: TASK_TRAIN, JobKind.predict: TASK_PREDICT}
# Fail fast when the broker is down, rather than hold a client's request for minutes:
# the job is in the database, and the reaper sends it when the broker is back.
RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def send_job(job: JobOut, *, first: bool = False) -> None:
    """Send a committed job's message to its queue; its task id is the job id, so that the
    reaper can tell whether the broker still holds it, and Flower shows the job and its
    model. ``first``: the job is sent again (its worker died or gave it back, its message
    was lost), so it goes ahead of the jobs of its priority queued since
    (``shared.transport``). Raises ``Unavailable`` when the broker cannot take it."""
    # A prediction of the top priority shares its level with the batches of sync
    # predictions, whose callers are waiting: it never goes ahead of them.
    first = first and not (job.kind is JobKind.predict and job.priority >= SERVE_PRIORITY)
    try:
        get_celery().send_task(
            TASKS[job.kind],
            args=[job.id],
            task_id=job.id,
            queue=job.queue,
            priority=broker_priority(job.priority),
            headers={JOB_FIRST_HEADER: True} if first else {},
            argsrepr=repr([job.id]),
            kwargsrepr=repr({"model": job.model_name, "kind": job.kind.value}),
            retry=True,
            retry_policy=RETRY,
        )
    except (BrokerError, OSError) as exc:
        log.warning("could not send job %s: %s", job.id, exc)
        raise Unavailable(f"the broker cannot be reached: {exc}") from None


def send_jobs(jobs: Sequence[JobOut]) -> list[tuple[JobOut, Unavailable]]:
    """Send many newly committed jobs' messages at once, each as ``send_job`` sends it
    (its task-sent event too), through one producer whose Redis commands go out in one
    pipeline: one round trip for all, where ``send_job`` makes two for each. Returns the
    jobs it could not send, each with why. A pipeline that fails may have delivered part
    of itself, so all its jobs count as not sent: the reaper sends again those whose
    messages the broker does not hold, and a message sent twice runs its job once."""
    if not jobs:
        return []
    app = get_celery()
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=4 * len(jobs)):
            for job in jobs:
                app.send_task(
                    TASKS[job.kind],
                    args=[job.id],
                    task_id=job.id,
                    queue=job.queue,
                    priority=broker_priority(job.priority),
                    argsrepr=repr([job.id]),
                    kwargsrepr=repr({"model": job.model_name, "kind": job.kind.value}),
                    producer=producer,
                    retry=True,
                    retry_policy=RETRY,
                )
    except (BrokerError, BatchPublishError, OSError) as exc:
        log.warning("could not send %d jobs: %s", len(jobs), exc)
        why = Unavailable(f"the broker cannot be reached: {exc}")
        return [(job, why) for job in jobs]
    return []


@lru_cache(maxsize=1)
def _batch_sender(app: Celery) -> Celery:
    """The app that sends batches: ``app``'s settings without Celery's ``task-sent``
    event, which would cost a second message for each batch (the worker's events still
    show it in Flower). One for each app ``get_celery`` makes, so that it follows the
    settings as that app does when they are read again."""
    sender = create_celery(get_settings())
    sender.conf.task_send_sent_event = False
    return sender


def send_batch(batch: ServeBatch, batch_id: str) -> None:
    """Send a batch to its queue; the header lists its jobs, so that the reaper knows the
    broker holds them. Raises ``Unavailable`` when the broker cannot take it."""
    ids = [i.id for i in batch.items]
    try:
        _batch_sender(get_celery()).send_task(
            TASK_SERVE,
            args=[batch.model_dump(mode="json")],
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


def direct_message(batch: ServeBatch, batch_id: str) -> bytes:
    """A batch as it waits in a direct list (``shared.routing.direct_queue``): its headers
    as a Celery message's (its id, its jobs), so that the reaper reads both alike."""
    headers = json.dumps({"id": batch_id, JOBS_HEADER: [i.id for i in batch.items]})
    return b'{"headers":%s,"batch":%s}' % (headers.encode(), batch.model_dump_json().encode())


def send_delivery(delivery_id: str) -> None:
    """Send a recorded webhook delivery's task; Unavailable when the broker cannot take it
    (the delivery waits in the database, and the reaper sends it)."""
    try:
        get_celery().send_task(
            TASK_DELIVER,
            args=[delivery_id],
            queue=QUEUE_WEBHOOKS,
            retry=True,
            retry_policy=RETRY,
        )
    except (BrokerError, OSError) as exc:
        raise Unavailable(f"the broker cannot be reached: {exc}") from None
