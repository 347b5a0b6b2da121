"""The Celery tasks: thin. Decode the id, hand it to a plain function in ``workers.jobs``.

Registered with ``shared_task`` so that importing this module builds no app and reads no
settings; the worker process has made its app before it imports this."""

from __future__ import annotations

import os
from typing import Any

from celery import shared_task

from shared.constants import TASK_PREDICT, TASK_SERVE, TASK_TRAIN
from shared.errors import Unavailable
from workers import jobs


def _owner(task: Any) -> str:
    """The lease owner: the Celery node and the process, unique across restarts."""
    return f"{task.request.hostname}:{os.getpid()}"


def _backoff(retries: int) -> float:
    return float(min(2**retries, 60))


@shared_task(name=TASK_TRAIN, bind=True, max_retries=None)
def train(self: Any, job_id: str) -> None:
    jobs.guard_sigterm()
    try:
        jobs.run_train_job(job_id, worker=_owner(self))
    except Unavailable as exc:  # the job could not be claimed: try again, later
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None


@shared_task(name=TASK_PREDICT, bind=True, max_retries=None)
def predict(self: Any, job_id: str) -> None:
    try:
        jobs.run_predict_job(job_id, worker=_owner(self))
    except Unavailable as exc:
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None


# No task events for batches of sync predictions: three event messages per batch would
# double the broker traffic of the fastest path. Each request is a job in the database.
@shared_task(name=TASK_SERVE, bind=True, send_events=False)
def serve(self: Any, batch: Any) -> None:
    from workers.batches import decode_batch, run_batch  # a module, not a package: cheap

    if (checked := decode_batch(batch, self.request.id)) is not None:
        run_batch(checked, worker=_owner(self))
