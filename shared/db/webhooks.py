"""Webhook subscriptions and their deliveries: the one writer of both, and their reads.

An event (a job's end, a model version, a sweep's end) is recorded by ``record`` in the
transaction that made it happen, as one delivery per subscription that wants it: a crash
after that commit delays the notice, never loses it. Deliveries are sent after the
commit (``shared.webhook_sender``), and again by the reaper while one is due; an attempt
is claimed by one conditional UPDATE that moves its next attempt on, so two senders do
not both send it. ``(webhook, event_key)`` is unique: an event is recorded once.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.jobstate import now
from shared.webhook_schemas import DeliveryOut, DeliveryPage, WebhookOut
from shared.webhookstate import DeliveryState

from .models import Webhook, WebhookDelivery

# Where the ids of deliveries recorded in a transaction wait for its commit.
SEND_AFTER_COMMIT = "torchqueue_webhook_deliveries"
# How long a claimed attempt has before another sender may try the delivery again.
ATTEMPT_SECONDS = 60.0


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _out(row: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(row, from_attributes=True)


def create(
    session: Session,
    *,
    url: str,
    events: list[str],
    owner: str | None,
    owner_is_admin: bool,
    job_id: str | None = None,
) -> tuple[WebhookOut, str]:
    """A subscription (``job_id``: to that job's end alone, a job's callback), and its
    signing secret (shown to its maker once)."""
    secret = _secret()
    row = Webhook(id=str(uuid.uuid4()), url=url, events=sorted(set(events)), secret=secret,
                  owner=owner, owner_is_admin=owner_is_admin, job_id=job_id,
                  created_at=now())  # fmt: skip
    session.add(row)
    session.flush()
    return _out(row), secret


def _row(session: Session, webhook_id: str, viewer: str | None) -> Webhook:
    row = session.get(Webhook, webhook_id)
    if row is None or (viewer is not None and row.owner != viewer):
        raise NotFound(f"no webhook '{webhook_id}'", field="webhook_id")
    return row


def get(session: Session, webhook_id: str, viewer: str | None) -> WebhookOut:
    return _out(_row(session, webhook_id, viewer))


def list_webhooks(session: Session, viewer: str | None) -> list[WebhookOut]:
    query = sa.select(Webhook).order_by(Webhook.created_at)
    if viewer is not None:
        query = query.where(Webhook.owner == viewer)
    return [_out(r) for r in session.scalars(query)]


def delete(session: Session, webhook_id: str, viewer: str | None) -> None:
    session.delete(_row(session, webhook_id, viewer))
    session.flush()


def deliveries(
    session: Session, webhook_id: str, viewer: str | None, *, limit: int = 50, offset: int = 0
) -> DeliveryPage:
    _row(session, webhook_id, viewer)
    query = (
        sa.select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.created_at.desc())
    )
    items = [
        DeliveryOut.model_validate(r, from_attributes=True)
        for r in session.scalars(query.limit(limit).offset(offset))
    ]
    return DeliveryPage(items=items, limit=limit, offset=offset)


def record(session: Session, event: str, key: str, data: dict[str, Any], owner: str | None) -> None:
    """``event`` happened (``key``: what it happened to, once): a delivery for each
    subscription that wants it (its owner's, or an admin's), sent after the commit."""
    # Whose: an admin's, or the owner's; a job's callback hears only its own job.
    query = sa.select(Webhook).where(
        sa.or_(Webhook.owner_is_admin, Webhook.owner == owner) if owner else Webhook.owner_is_admin,
        sa.or_(Webhook.job_id.is_(None), Webhook.job_id == key),
    )
    wanted = [w for w in session.scalars(query) if event in w.events]
    stamp = now()
    for webhook in wanted:
        delivery_id = str(uuid.uuid4())
        payload = {"type": event, "timestamp": stamp.isoformat(), "data": data}
        try:
            with session.begin_nested():
                session.add(
                    WebhookDelivery(
                        id=delivery_id, webhook_id=webhook.id, event=event,
                        event_key=f"{event}:{key}"[:128], payload=payload,
                        state=DeliveryState.pending, attempts=0, last_status=None,
                        last_error=None, next_attempt_at=stamp, sent_at=None, created_at=stamp,
                        delivered_at=None,
                    )
                )  # fmt: skip
        except IntegrityError:  # recorded already (a retried commit): once is enough
            continue
        session.info.setdefault(SEND_AFTER_COMMIT, []).append(delivery_id)
    if session.info.get(SEND_AFTER_COMMIT) and not sa.event.contains(
        session, "after_commit", _send_after_commit
    ):
        sa.event.listen(session, "after_commit", _send_after_commit)


def _send_after_commit(session: Session) -> None:
    from shared.webhook_sender import send_recorded

    send_recorded(session)


def any_subscription(session: Session) -> bool:
    """Whether any subscription exists: events are looked at only then."""
    return session.scalar(sa.select(sa.exists().where(Webhook.id.is_not(None)))) is True


def claim_attempt(session: Session, delivery_id: str) -> tuple[WebhookDelivery, Webhook] | None:
    """An attempt at a due, pending delivery, this sender's alone (its next attempt is
    moved on by ``ATTEMPT_SECONDS`` in the same UPDATE); None when it is not due."""
    stamp = now()
    moved = session.execute(
        sa.update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.pending,
            WebhookDelivery.next_attempt_at <= stamp,
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            next_attempt_at=stamp + timedelta(seconds=ATTEMPT_SECONDS),
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(moved, "rowcount", 0) != 1:
        return None
    delivery = session.get(WebhookDelivery, delivery_id)
    assert delivery is not None  # it was just updated
    session.refresh(delivery)
    webhook = session.get(Webhook, delivery.webhook_id)
    return (delivery, webhook) if webhook is not None else None


def attempted(
    session: Session,
    delivery_id: str,
    *,
    status: int | None,
    error: str | None,
    retry_at: datetime | None,
) -> None:
    """An attempt's end: delivered (a 2xx), due again at ``retry_at``, or given up."""
    if status is not None and 200 <= status < 300:
        values: dict[str, Any] = {"state": DeliveryState.delivered, "delivered_at": now()}
    elif retry_at is not None:
        values = {"next_attempt_at": retry_at}
    else:
        values = {"state": DeliveryState.failed}
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == DeliveryState.pending)
        .values(last_status=status, last_error=error, **values)
        .execution_options(synchronize_session=False)
    )


def due(session: Session, grace_seconds: float, limit: int = 500) -> list[str]:
    """Pending deliveries that are due (a first one for ``grace_seconds``) and whose task
    was not sent again within an attempt's time (one may still wait in the broker: the
    reaper sends at most one more per ``ATTEMPT_SECONDS``); each is marked sent."""
    stamp = now()
    ids = list(
        session.scalars(
            sa.select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state == DeliveryState.pending,
                # A retry is due at its time; a first attempt's task, sent after its
                # event's commit, is given ``grace_seconds`` to arrive.
                sa.or_(
                    sa.and_(
                        WebhookDelivery.attempts == 0,
                        WebhookDelivery.next_attempt_at <= stamp - timedelta(seconds=grace_seconds),
                    ),
                    sa.and_(WebhookDelivery.attempts > 0, WebhookDelivery.next_attempt_at <= stamp),
                ),
                sa.or_(
                    WebhookDelivery.sent_at.is_(None),
                    WebhookDelivery.sent_at <= stamp - timedelta(seconds=ATTEMPT_SECONDS),
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )
    if ids:
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(sent_at=stamp)
            .execution_options(synchronize_session=False)
        )
    return ids
