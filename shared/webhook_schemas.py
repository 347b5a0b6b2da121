"""The wire of webhooks: a subscription as made and shown, and its deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Event = Literal["job.succeeded", "job.failed", "job.cancelled", "model.version.created",
                "sweep.finished"]  # fmt: skip


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, examples=["https://ci.example.com/torchqueue"])
    events: list[Event] = Field(min_length=1, max_length=16)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    owner: str | None
    # Set for a job's callback_url: a subscription to that job's end alone.
    job_id: str | None = None
    created_at: datetime


class WebhookCreated(WebhookOut):
    """As made: with the secret its deliveries are signed with, shown this once."""

    secret: str


class DeliveryOut(BaseModel):
    id: str
    webhook_id: str
    event: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    limit: int
    offset: int
