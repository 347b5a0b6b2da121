"""The webhook delivery task: thin, torch-free. A worker started with ``--queues
webhooks`` takes it, on a pool of threads (deliveries wait on the network, not on a
device)."""

from __future__ import annotations

from celery import shared_task

from shared.constants import TASK_DELIVER


@shared_task(name=TASK_DELIVER, send_events=False, ignore_result=True)
def deliver(delivery_id: str) -> None:
    from shared.webhook_sender import deliver as attempt

    attempt(delivery_id)
