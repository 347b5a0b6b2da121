"""Sending a recorded job to its queue, by task name: the API holds no task code."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as BrokerError

from shared.celery_app import get_celery
from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN, TASK_PREDICT, TASK_TRAIN
from shared.db import store
from shared.db.session import session_scope
from shared.errors import Unavailable
from shared.jobstate import JobKind, JobState
from shared.schemas import JobOut

log = logging.getLogger(__name__)

TASKS = {JobKind.train: (TASK_TRAIN, QUEUE_TRAIN), JobKind.predict: (TASK_PREDICT, QUEUE_PREDICT)}
# Fail fast when the broker is down, rather than hold the client's request for minutes.
RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def queue_for(kind: JobKind) -> str:
    return TASKS[kind][1]


def send(job: JobOut) -> None:
    """Send a committed job's message. When the broker cannot take it, the job fails with
    the reason rather than wait in the database for a message that was never sent."""
    task, queue = TASKS[job.kind]
    try:
        get_celery().send_task(task, args=[job.id], queue=queue, retry=True, retry_policy=RETRY)
    except (BrokerError, OSError) as exc:
        log.error("could not enqueue job %s: %s", job.id, exc)
        with session_scope() as s:
            store.finish_job(
                s,
                job.id,
                JobState.failed,
                error={"type": "unavailable", "message": f"the broker cannot be reached: {exc}"},
            )
        raise Unavailable(f"the broker cannot be reached; job {job.id} was not queued") from None
