"""Sending one recorded webhook delivery (``shared.db.webhooks``): claim the attempt,
check the URL again, POST the event signed the Standard Webhooks way (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: the ``standardwebhooks`` package), never
following a redirect, and record the answer. A failure or a timeout is tried again
after ``TORCHQUEUE_WEBHOOK_RETRY_SECONDS``, doubling up to an hour, until
``TORCHQUEUE_WEBHOOK_RETRY_FOR_HOURS`` after the event; the reaper sends what is due."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

import httpx
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook as Signer

from shared.config import get_settings
from shared.db import webhooks
from shared.db.session import session_scope
from shared.errors import InvalidSpec, Unavailable
from shared.jobstate import now
from shared.webhook_urls import check_webhook_url

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 3600.0


def headers(secret: str, delivery_id: str, body: str, at: datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Signer(secret).sign(delivery_id, at, body),
    }


def retry_at(attempts: int, created: datetime) -> datetime | None:
    """When to try again after ``attempts`` failed ones; None once the day is over."""
    settings = get_settings()
    wait = min(settings.webhook_retry_seconds * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS)
    then = now() + timedelta(seconds=wait)
    give_up = created + timedelta(hours=settings.webhook_retry_for_hours)
    return then if then <= give_up else None


def deliver(delivery_id: str) -> int | None:
    """One attempt at a delivery, if it is due; the receiver's status (None: not sent)."""
    with session_scope() as s:
        claimed = webhooks.claim_attempt(s, delivery_id)
        if claimed is None:
            return None
        delivery, webhook = claimed
        url, secret, payload = webhook.url, webhook.secret, delivery.payload
        attempts, created = delivery.attempts, delivery.created_at
    status: int | None = None
    error: str | None = None
    again = True
    try:
        check_webhook_url(url)
        body = json.dumps(payload, separators=(",", ":"))
        answer = httpx.post(
            url,
            content=body,
            headers=headers(secret, delivery_id, body, now()),
            timeout=get_settings().webhook_timeout_seconds,
            follow_redirects=False,
        )
        status = answer.status_code
        if not 200 <= status < 300:
            error = f"answered {status}"
    except InvalidSpec as exc:  # the URL is no longer one we send to: never again
        error, again = exc.detail, False
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    later = retry_at(attempts, created) if again else None
    with session_scope() as s:
        webhooks.attempted(s, delivery_id, status=status, error=error, retry_at=later)
    if error:
        log.warning("webhook delivery %s to %s: %s (attempt %d)", delivery_id, url, error, attempts)
    return status


def send_recorded(session: Session) -> None:
    """After a commit that recorded deliveries: send each (the reaper sends what fails)."""
    from shared.enqueue import send_delivery

    for delivery_id in session.info.pop(webhooks.SEND_AFTER_COMMIT, []):
        try:
            send_delivery(delivery_id)
        except Unavailable as exc:
            log.warning("webhook delivery %s not sent yet: %s", delivery_id, exc.detail)
