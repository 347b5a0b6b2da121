"""SQLAlchemy 2.0 typed models. Rows never leave the module that reads them (``job_reads``,
``jobs``, ``model_registry``, ``fleet``, ``keys``): they return pydantic objects. Schema changes
are Alembic migrations under ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from shared.jobstate import JobEventKind, JobKind, JobState
from shared.sweepstate import SweepState, TrialState
from shared.webhookstate import DeliveryState


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _enum(cls: type[Any], name: str, length: int = 16) -> sa.Enum:
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda e: [m.value for m in e],
    )


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: sa.JSON, datetime: UTCDateTime}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_state_created", "state", "created_at"),
        sa.Index("ix_jobs_model_name", "model_name"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"))
    model_name: Mapped[str] = mapped_column(sa.String(128))
    # The validated request, exactly as the worker will run it.
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(sa.String(64))
    progress: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    # What the job cost: wall and device seconds, peak memory, samples/s, energy.
    usage: Mapped[dict[str, Any] | None]
    worker: Mapped[str | None] = mapped_column(sa.String(255))
    # For a training job, the version it registered; for a prediction, the one it used.
    model_version: Mapped[int | None]
    # The latest thing a person should know: "resumed from epoch 3", "waiting for …".
    message: Mapped[str | None] = mapped_column(sa.Text)
    # A client's Idempotency-Key, and the hash of the request it came with.
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    # The API key that submitted the job, and the one that cancelled it.
    submitted_by: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    cancelled_by: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class RegisteredModel(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Batching of sync predictions for this model; None: the global settings.
    max_batch_size: Mapped[int | None]
    max_wait_ms: Mapped[float | None] = mapped_column(sa.Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_name", "version", name="uq_model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE")
    )
    version: Mapped[int]
    family: Mapped[str] = mapped_column(sa.String(64))
    params: Mapped[dict[str, Any]]
    # What a prediction must send: {"kind": "text"}, {"kind": "features", "n_features": N}
    # or {"kind": "image", "shape": [C, H, W]}.
    input_schema: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    artifact_uri: Mapped[str] = mapped_column(sa.String(1024))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    job_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("jobs.id"))
    # The cost of the job that made this version.
    usage: Mapped[dict[str, Any] | None]
    # Lineage: the data set version it was trained on, {name, version, sha256}.
    dataset: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]


class JobEvent(Base):
    """A job's history: queued, claimed, resumed, lease expired, cancelled, finished."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime]
    kind: Mapped[JobEventKind] = mapped_column(_enum(JobEventKind, "job_event_kind", 32))
    message: Mapped[str] = mapped_column(sa.Text)
    worker: Mapped[str | None] = mapped_column(sa.String(255))


class Lock(Base):
    """A named lock with an expiry, held by one process at a time (the reaper's)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(255))
    expires_at: Mapped[datetime]


class ApiKey(Base):
    """An API key: its public id, a salted hash of its secret (never the secret), scopes."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    salt: Mapped[str] = mapped_column(sa.String(64))
    secret_hash: Mapped[str] = mapped_column(sa.String(128))
    scopes: Mapped[list[str]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Worker(Base):
    """A worker process as it registered itself, and when it was last seen."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pool: Mapped[str] = mapped_column(sa.String(64))
    queues: Mapped[list[str]] = mapped_column(sa.JSON)
    devices: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    versions: Mapped[dict[str, Any]]
    pid: Mapped[int]
    # The names of the model families it loaded (None: a worker from before families
    # were reported, which has the built-ins).
    families: Mapped[list[str] | None] = mapped_column(sa.JSON)
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]


class ModelFamily(Base):
    """A model family as the last worker that loaded it reported it (``FamilyInfo``):
    what the API validates a plugin family's jobs against without importing its code."""

    __tablename__ = "model_families"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    package: Mapped[str] = mapped_column(sa.String(128))
    version: Mapped[str] = mapped_column(sa.String(64))
    info: Mapped[dict[str, Any]]
    reported_by: Mapped[str] = mapped_column(sa.String(255))
    reported_at: Mapped[datetime]


class Dataset(Base):
    """A data set's name, and the API key that created it (its owner)."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    created_by: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DatasetVersion(Base):
    """A data set's version: an uploaded file (stored as Parquet, or as npy/npz arrays),
    a job's inline rows, or a URL the workers read (its sha256, rows and columns recorded
    at its first read)."""

    __tablename__ = "dataset_versions"
    __table_args__ = (sa.UniqueConstraint("dataset_name", "version", name="uq_dataset_version"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    dataset_name: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("datasets.name", ondelete="CASCADE")
    )
    version: Mapped[int]
    source: Mapped[str] = mapped_column(sa.String(16))
    format: Mapped[str] = mapped_column(sa.String(16))
    uri: Mapped[str] = mapped_column(sa.String(2048))
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    upload_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    rows: Mapped[int | None] = mapped_column(sa.BigInteger)
    columns: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON)
    value_counts: Mapped[dict[str, Any] | None]
    created_by: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]


class ModelAlias(Base):
    """A model's alias (production, staging, …) and the version it points at now; written
    by ``shared.db.aliases`` alone, each move recorded as a ``ModelAliasEvent``."""

    __tablename__ = "model_aliases"
    __table_args__ = (sa.UniqueConstraint("model_name", "alias", name="uq_model_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE")
    )
    alias: Mapped[str] = mapped_column(sa.String(32))
    version: Mapped[int]
    updated_at: Mapped[datetime]
    # The API key that last moved it.
    updated_by: Mapped[str] = mapped_column(sa.String(64))


class ModelAliasEvent(Base):
    """A move of an alias: from which version to which (None for a new alias, and for a
    removal), by which key (its id and name), when. It goes with its model."""

    __tablename__ = "model_alias_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(
        sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE"), index=True
    )
    alias: Mapped[str] = mapped_column(sa.String(32))
    from_version: Mapped[int | None]
    to_version: Mapped[int | None]
    by_key: Mapped[str] = mapped_column(sa.String(64))
    by_name: Mapped[str] = mapped_column(sa.String(128))
    at: Mapped[datetime]


class Sweep(Base):
    """A hyperparameter sweep: its validated request, and where it stands."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    state: Mapped[SweepState] = mapped_column(_enum(SweepState, "sweep_state"))
    model_name: Mapped[str] = mapped_column(sa.String(128))
    spec: Mapped[dict[str, Any]]
    # The number of its best trial so far.
    best_trial: Mapped[int | None]
    message: Mapped[str | None] = mapped_column(sa.Text)
    submitted_by: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class SweepTrial(Base):
    """One trial of a sweep: numbered 0, 1, … under a unique constraint (so that no trial
    is ever made twice), with the ordinary training job that runs it."""

    __tablename__ = "sweep_trials"
    __table_args__ = (sa.UniqueConstraint("sweep_id", "number", name="uq_sweep_trial"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int]
    job_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("jobs.id"), unique=True)
    state: Mapped[TrialState] = mapped_column(_enum(TrialState, "trial_state"))
    # The sampled values, by the space's keys; what the sampler noted with them.
    params: Mapped[dict[str, Any]]
    system_attrs: Mapped[dict[str, Any]]
    value: Mapped[float | None] = mapped_column(sa.Float)
    # The metric after each epoch, {"1": 0.42, …}: what the pruner compares.
    intermediate: Mapped[dict[str, Any]]
    epoch: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class Webhook(Base):
    """A subscription: where to send which events, signed with its own secret (Standard
    Webhooks), for the key that made it (an admin key's hears every key's events)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(2048))
    events: Mapped[list[str]] = mapped_column(sa.JSON)
    secret: Mapped[str] = mapped_column(sa.String(128))
    owner: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    owner_is_admin: Mapped[bool] = mapped_column(default=False)
    # A job's callback_url: a subscription to that job's end alone.
    job_id: Mapped[str | None] = mapped_column(sa.String(36))
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event for one subscription, from the moment it happened (recorded in the same
    transaction) until it was delivered or given up: ``event_key`` makes it once."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "event_key", name="uq_webhook_event"),
        sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(sa.String(64))
    event_key: Mapped[str] = mapped_column(sa.String(128))
    payload: Mapped[dict[str, Any]]
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"))
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    next_attempt_at: Mapped[datetime]
    # When the reaper last sent its task (a task may wait in the broker meanwhile).
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
