"""The Celery app object, torch-free: the API sends tasks by name with it, workers consume
with it, Flower watches with it. Built on demand from the settings, never at import."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from shared.config import Settings, get_settings
from shared.constants import QUEUE_TRAIN
from shared.routing import PRIORITY_LEVELS
from shared.transport import AMQP

# A training job may run for days; Redis re-delivers an unacknowledged message after this
# long. The claim in the database makes a re-delivery harmless, and this keeps it rare.
VISIBILITY_TIMEOUT_SECONDS = 7 * 24 * 3600
PROC_ALIVE_TIMEOUT_SECONDS = 120.0


def create_celery(settings: Settings) -> Celery:
    # Our Redis transport: a job sent again goes to the front of its priority level.
    app = Celery("torchqueue", broker=settings.broker_url, amqp=AMQP, set_as_current=True)
    app.conf.update(
        # JSON only: a pickled message is remote code execution for whoever reaches Redis.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Results, progress and errors live in the database; Redis keeps no result keys
        # that would grow without bound.
        task_ignore_result=True,
        result_backend=None,
        # Acknowledge after the task ends, so a worker that dies mid-job leaves the message
        # to be delivered again; a worker killed by a signal (OOM) rejects it rather than
        # acknowledging it. The attempt count in the database caps the loop.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time: a busy worker never hoards jobs an idle device could run.
        worker_prefetch_multiplier=1,
        # A prefork child loads torch (and what the first job needs) before it reports
        # up: seconds on a loaded machine, past Celery's 4 s default, after which the
        # parent kills it and starts another, forever, and no job runs.
        worker_proc_alive_timeout=PROC_ALIVE_TIMEOUT_SECONDS,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            # Priorities within a queue: one Redis list per level, served highest first.
            "queue_order_strategy": "priority",
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "sep": ":",
        },
        # A broker blip must not kill an hour of training: the running task goes on, and
        # the claim turns the message's later re-delivery into a no-op.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        # Queues are named by ``shared.routing`` and made when first used, each with its
        # own exchange and key, so a message lands in exactly one queue.
        task_create_missing_queues=True,
        task_default_queue=QUEUE_TRAIN,
        task_default_exchange_type="direct",
        # Events let Flower show workers and tasks as they run.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return create_celery(get_settings())
