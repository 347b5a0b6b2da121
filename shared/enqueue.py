"""Sending a recorded job's message, by task name: the sender holds no task code. Used by
the API when a job is submitted and by the reaper when a job must be sent again."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as BrokerError

from shared.celery_app import get_celery
from shared.constants import TASK_PREDICT, TASK_TRAIN
from shared.errors import Unavailable
from shared.jobstate import JobKind
from shared.routing import broker_priority
from shared.schemas import JobOut

log = logging.getLogger(__name__)

TASKS = {JobKind.train: TASK_TRAIN, JobKind.predict: TASK_PREDICT}
# Fail fast when the broker is down, rather than hold a client's request for minutes:
# the job is in the database, and the reaper sends it when the broker is back.
RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def send_job(job: JobOut) -> None:
    """Send a committed job's message to its queue; its task id is the job id, so that the
    reaper can tell whether the broker still holds it, and Flower shows the job and its
    model. Raises ``Unavailable`` when the broker cannot take it."""
    try:
        get_celery().send_task(
            TASKS[job.kind],
            args=[job.id],
            task_id=job.id,
            queue=job.queue,
            priority=broker_priority(job.priority),
            argsrepr=repr([job.id]),
            kwargsrepr=repr({"model": job.model_name, "kind": job.kind.value}),
            retry=True,
            retry_policy=RETRY,
        )
    except (BrokerError, OSError) as exc:
        log.warning("could not send job %s: %s", job.id, exc)
        raise Unavailable(f"the broker cannot be reached: {exc}") from None
