"""Sending a recorded job's message, by task name: the sender holds no task code. Used by
the API when a job is submitted and by the reaper when a job must be sent again."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as BrokerError

from shared.celery_app import get_celery
from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN, TASK_PREDICT, TASK_TRAIN
from shared.errors import Unavailable
from shared.jobstate import JobKind
from shared.schemas import JobOut

log = logging.getLogger(__name__)

TASKS = {JobKind.train: (TASK_TRAIN, QUEUE_TRAIN), JobKind.predict: (TASK_PREDICT, QUEUE_PREDICT)}
# Fail fast when the broker is down, rather than hold a client's request for minutes:
# the job is in the database, and the reaper sends it when the broker is back.
RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def queue_for(kind: JobKind) -> str:
    return TASKS[kind][1]


def send_job(job: JobOut) -> None:
    """Send a committed job's message; its task id is the job id, so that the reaper can
    tell whether the broker still holds it. Raises ``Unavailable`` when it cannot."""
    task, queue = TASKS[job.kind]
    try:
        get_celery().send_task(
            task, args=[job.id], task_id=job.id, queue=queue, retry=True, retry_policy=RETRY
        )
    except (BrokerError, OSError) as exc:
        log.warning("could not send job %s: %s", job.id, exc)
        raise Unavailable(f"the broker cannot be reached: {exc}") from None
