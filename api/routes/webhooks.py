"""Webhook subscriptions: other systems hear of job ends, model versions and sweep ends
without polling. Deliveries follow the Standard Webhooks scheme, signed with the
subscription's secret (shown once, when it is made). A key manages its own."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.auth import JobsRead, JobsSubmit
from api.deps import SessionDep
from shared.db import webhooks
from shared.schemas import MAX_OFFSET, ErrorOut
from shared.webhook_schemas import DeliveryPage, WebhookCreated, WebhookIn, WebhookOut
from shared.webhook_urls import check_webhook_url

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 422)
}


@router.post("", status_code=201, responses=ERRORS)
def create_webhook(body: WebhookIn, session: SessionDep, who: JobsSubmit) -> WebhookCreated:
    """Subscribe ``url`` to ``events``: the key's own jobs, models and sweeps (an admin
    key's: everyone's). The answer holds the signing secret, shown only here. The URL is
    checked against server-side request forgery (422 naming ``url``)."""
    url = check_webhook_url(body.url)
    made, secret = webhooks.create(
        session, url=url, events=list(body.events), owner=who.key_id,
        owner_is_admin=who.is_admin,
    )  # fmt: skip
    return WebhookCreated(**made.model_dump(), secret=secret)


@router.get("", responses=ERRORS)
def list_webhooks(session: SessionDep, who: JobsRead) -> list[WebhookOut]:
    return webhooks.list_webhooks(session, who.viewer)


@router.get("/{webhook_id}", responses=ERRORS)
def get_webhook(webhook_id: str, session: SessionDep, who: JobsRead) -> WebhookOut:
    return webhooks.get(session, webhook_id, who.viewer)


@router.delete("/{webhook_id}", status_code=204, responses=ERRORS)
def delete_webhook(webhook_id: str, session: SessionDep, who: JobsSubmit) -> Response:
    """Unsubscribe; deliveries not yet made are dropped with it."""
    webhooks.delete(session, webhook_id, who.viewer)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", responses=ERRORS)
def list_deliveries(
    webhook_id: str,
    session: SessionDep,
    who: JobsRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DeliveryPage:
    """Newest first: each event's state (pending, delivered, failed), attempts, and the
    receiver's last status code or the error."""
    return webhooks.deliveries(session, webhook_id, who.viewer, limit=limit, offset=offset)
