"""The data layer: every query the API and the workers make. Functions take a session
(``session_scope`` commits) and return pydantic objects, never ORM rows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.jobstate import JobEventKind, JobKind, JobState, now, transition
from shared.schemas import (
    BatchingIn,
    JobEventOut,
    JobOut,
    JobPage,
    ModelOut,
    ModelPage,
    ModelVersionOut,
)

from .models import Job, JobEvent, ModelVersion, RegisteredModel


def _job_out(row: Job) -> JobOut:
    return JobOut.model_validate(row, from_attributes=True)


def _version_out(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut.model_validate(row, from_attributes=True)


# --- jobs ------------------------------------------------------------------------------


def add_event(
    session: Session, job_id: str, kind: JobEventKind, message: str, worker: str | None = None
) -> None:
    session.add(JobEvent(job_id=job_id, at=now(), kind=kind, message=message, worker=worker))


def list_events(session: Session, job_id: str) -> list[JobEventOut]:
    get_job(session, job_id)  # 404 for an unknown job
    rows = session.scalars(
        sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    )
    return [JobEventOut.model_validate(r, from_attributes=True) for r in rows]


def create_job(
    session: Session,
    *,
    kind: JobKind,
    model_name: str,
    spec: dict[str, Any],
    queue: str,
    model_version: int | None = None,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    submitted_by: str | None = None,
    priority: int = 0,
    message: str | None = None,
) -> JobOut:
    stamp = now()
    row = Job(
        id=str(uuid.uuid4()),
        kind=kind,
        state=JobState.queued,
        model_name=model_name,
        spec=spec,
        queue=queue,
        model_version=model_version,
        attempts=0,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        submitted_by=submitted_by,
        priority=priority,
        message=message,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(row)
    add_event(session, row.id, JobEventKind.queued, f"queued on {queue}")
    session.flush()
    return _job_out(row)


def find_idempotent(session: Session, key: str) -> tuple[JobOut, str | None] | None:
    """The job made for an Idempotency-Key, with the hash of the request that made it."""
    row = session.scalars(sa.select(Job).where(Job.idempotency_key == key)).first()
    return None if row is None else (_job_out(row), row.request_hash)


def get_job(session: Session, job_id: str) -> JobOut:
    row = session.get(Job, job_id, populate_existing=True)
    if row is None:
        raise NotFound(f"no job '{job_id}'", field="job_id")
    return _job_out(row)


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    kind: JobKind | None = None,
    model_name: str | None = None,
    submitted_by: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    where = []
    if submitted_by is not None:
        where.append(Job.submitted_by == submitted_by)
    if state is not None:
        where.append(Job.state == state)
    if kind is not None:
        where.append(Job.kind == kind)
    if model_name is not None:
        where.append(Job.model_name == model_name)
    total = session.scalar(sa.select(sa.func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        sa.select(Job)
        .where(*where)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    )
    return JobPage(items=[_job_out(r) for r in rows], total=total, limit=limit, offset=offset)


def claim_job(session: Session, job_id: str, worker: str, lease_seconds: float) -> JobOut | None:
    """Take a job for ``worker``: a queued one, or a running one whose lease expired (its
    worker died) and that has attempts left. None when it is not there to take."""
    stamp = now()
    takeable = sa.or_(
        Job.state == JobState.queued,
        sa.and_(
            Job.heartbeat_at < stamp - timedelta(seconds=lease_seconds),
            Job.attempts < Job.max_attempts,
        ),
    )
    moved = transition(
        session,
        job_id,
        JobState.running,
        where=(takeable,),
        worker=worker,
        attempts=Job.attempts + 1,
        heartbeat_at=stamp,
        started_at=stamp,
        message=None,
    )
    if not moved:
        return None
    job = get_job(session, job_id)
    add_event(session, job_id, JobEventKind.claimed, f"attempt {job.attempts}", worker)
    return job


def renew_lease(session: Session, job_id: str, worker: str) -> JobState | None:
    """Renew ``worker``'s lease on a job; return the job's state (``cancelling`` asks the
    worker to stop), or None when the job is no longer this worker's."""
    result = session.execute(
        sa.update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.state.in_([JobState.running, JobState.cancelling]),
        )
        .values(heartbeat_at=now())
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    return session.scalar(sa.select(Job.state).where(Job.id == job_id))


def set_progress(session: Session, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
    """Record progress of a running job; False when the job is no longer this worker's."""
    stamp = now()
    values = {"progress": progress, "heartbeat_at": stamp, "updated_at": stamp}
    result = session.execute(
        sa.update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.state.in_([JobState.running, JobState.cancelling]),
        )
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


_FINISH_EVENTS = {
    JobState.succeeded: JobEventKind.succeeded,
    JobState.failed: JobEventKind.failed,
    JobState.cancelled: JobEventKind.cancelled,
}


def finish_job(
    session: Session,
    job_id: str,
    state: JobState,
    *,
    message: str,
    worker: str | None = None,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    model_version: int | None = None,
    usage: dict[str, Any] | None = None,
    where: tuple[Any, ...] = (),
) -> bool:
    """End a job. With ``worker``, only while that worker still owns it."""
    values: dict[str, Any] = {"result": result, "error": error, "message": message}
    if usage is not None:
        values["usage"] = usage
    if model_version is not None:
        values["model_version"] = model_version
    if worker is not None:
        where = (*where, Job.worker == worker)
    moved = transition(session, job_id, state, where=where, **values)
    if moved:
        add_event(session, job_id, _FINISH_EVENTS[state], message, worker)
    return moved


def set_message(session: Session, job_id: str, message: str) -> None:
    session.execute(sa.update(Job).where(Job.id == job_id).values(message=message))


# --- sync predictions: recorded after the fact, in batches -----------------------------


def record_predictions(session: Session, records: list[dict[str, Any]]) -> int:
    """Record finished sync predictions (``shared.serving.job_record``) in one go: new
    jobs are inserted; a job already recorded as queued (its caller stopped waiting) is
    finished; one that has ended otherwise (sent again and run) is left as it is.
    Returns how many rows were written."""
    if not records:
        return 0
    ids = [r["id"] for r in records]
    existing: dict[str, JobState] = {
        job_id: state
        for job_id, state in session.execute(sa.select(Job.id, Job.state).where(Job.id.in_(ids)))
    }
    new = [r for r in records if r["id"] not in existing]
    if new:  # the table's insert, not the ORM's: one executemany, no objects
        session.execute(_table(Job).insert(), new)
    written = len(new)
    for r in records:
        if existing.get(r["id"]) is JobState.queued:
            values = {k: v for k, v in r.items() if k not in ("id", "created_at")}
            moved = session.execute(
                sa.update(Job).where(Job.id == r["id"], Job.state == JobState.queued).values(values)
            )
            written += moved.rowcount  # type: ignore[attr-defined]
    events = [
        {"job_id": r["id"], "at": r["finished_at"], "kind": _FINISH_EVENTS[r["state"]],
         "message": r["message"], "worker": r["worker"]}
        for r in records
        if r["id"] not in existing or existing[r["id"]] is JobState.queued
    ]  # fmt: skip
    if events:
        session.execute(_table(JobEvent).insert(), events)
    return written


def _table(model: type[Any]) -> sa.Table:
    table: sa.Table = model.__table__
    return table


def record_waiting(session: Session, record: dict[str, Any]) -> JobOut:
    """Record a sync prediction whose caller stops waiting as a queued job, unless its
    worker recorded it first; return the job as it is now."""
    row = session.get(Job, record["id"], populate_existing=True)
    if row is None:
        try:
            with session.begin_nested():
                session.execute(sa.insert(Job), [record])
                add_event(session, record["id"], JobEventKind.queued, record["message"])
        except IntegrityError:
            pass  # its worker's write came first
    return get_job(session, record["id"])


def request_cancel(session: Session, job_id: str, by: str | None = None) -> JobOut:
    """Cancel a queued job at once; ask the worker of a running one to stop (its job
    becomes ``cancelling``, then ``cancelled``). A finished job is a conflict."""
    before = "cancelled before it started"
    if transition(
        session,
        job_id,
        JobState.cancelled,
        only_from=frozenset({JobState.queued}),
        message=before,
        cancelled_by=by,
    ):
        add_event(session, job_id, JobEventKind.cancelled, before)
    elif transition(
        session, job_id, JobState.cancelling, message="cancel requested", cancelled_by=by
    ):
        add_event(session, job_id, JobEventKind.cancel_requested, "cancel requested")
    job = get_job(session, job_id)
    if job.state.is_terminal() and job.message != before:
        raise Conflict(
            f"job {job_id} has already {job.state.value}; there is nothing to cancel",
            field="job_id",
        )
    return job


def requeue(
    session: Session,
    job_id: str,
    *,
    reason: str,
    worker: str | None,
    charge_attempt: bool,
    expired_before: datetime | None = None,
) -> bool:
    """Put a running job back in the queue. A worker that shut down cleanly does not
    charge the job an attempt; a lease that expired does."""
    where: list[Any] = []
    if worker is not None:
        where.append(Job.worker == worker)
    if expired_before is not None:
        where.append(Job.heartbeat_at < expired_before)
    values: dict[str, Any] = {"message": reason}
    if not charge_attempt:
        values["attempts"] = Job.attempts - 1
    moved = transition(session, job_id, JobState.queued, where=tuple(where), **values)
    if moved:
        kind = JobEventKind.lease_expired if expired_before is not None else JobEventKind.requeued
        add_event(session, job_id, kind, reason, worker)
    return moved


# --- models ----------------------------------------------------------------------------


def _ensure_model(session: Session, model_name: str) -> None:
    """Create the model's row unless it exists; a racing creator's row is as good."""
    if session.get(RegisteredModel, model_name) is not None:
        return
    stamp = now()
    try:
        with session.begin_nested():
            session.add(RegisteredModel(name=model_name, created_at=stamp, updated_at=stamp))
    except IntegrityError:
        pass


def register_model_version(
    session: Session,
    *,
    model_name: str,
    family: str,
    params: dict[str, Any],
    input_schema: dict[str, Any],
    metrics: dict[str, Any],
    artifact_uri: str,
    sha256: str,
    job_id: str,
    usage: dict[str, Any] | None = None,
    retries: int = 5,
) -> ModelVersionOut:
    """Add version N+1 of a model. The model's row is locked while the number is chosen
    (``SELECT … FOR UPDATE``; SQLite's write lock does the same), so racing workers take
    turns; the unique (name, version) constraint stays as the last word."""
    for _ in range(retries):
        stamp = now()
        try:
            with session.begin_nested():
                _ensure_model(session, model_name)
                session.execute(
                    sa.select(RegisteredModel.name)
                    .where(RegisteredModel.name == model_name)
                    .with_for_update()
                )
                latest = session.scalar(
                    sa.select(sa.func.max(ModelVersion.version)).where(
                        ModelVersion.model_name == model_name
                    )
                )
                row = ModelVersion(
                    model_name=model_name,
                    version=(latest or 0) + 1,
                    family=family,
                    params=params,
                    input_schema=input_schema,
                    metrics=metrics,
                    artifact_uri=artifact_uri,
                    sha256=sha256,
                    job_id=job_id,
                    usage=usage,
                    created_at=stamp,
                )
                session.add(row)
                session.execute(
                    sa.update(RegisteredModel)
                    .where(RegisteredModel.name == model_name)
                    .values(updated_at=stamp)
                )
                session.flush()
            return _version_out(row)
        except IntegrityError:
            continue
    raise Conflict(f"could not assign a version to model '{model_name}'; try again")


def get_model_version(session: Session, model_name: str, version: int | str) -> ModelVersionOut:
    query = sa.select(ModelVersion).where(ModelVersion.model_name == model_name)
    if version == "latest":
        query = query.order_by(ModelVersion.version.desc()).limit(1)
    else:
        query = query.where(ModelVersion.version == int(version))
    row = session.scalars(query).first()
    if row is None:
        get_model(session, model_name, with_versions=False)  # 404 for the model itself first
        raise NotFound(f"model '{model_name}' has no version {version}", field="version")
    return _version_out(row)


def latest_version(session: Session, model_name: str) -> int | None:
    """The number of a model's latest version (None: no version, or no model)."""
    found = session.execute(
        sa.select(sa.func.max(ModelVersion.version)).where(ModelVersion.model_name == model_name)
    ).scalar()
    return int(found) if found is not None else None


def model_batching(session: Session, model_name: str) -> BatchingIn:
    """A model's own batching settings (both None for an unknown model)."""
    found = session.execute(
        sa.select(RegisteredModel.max_batch_size, RegisteredModel.max_wait_ms).where(
            RegisteredModel.name == model_name
        )
    ).first()
    if found is None:
        return BatchingIn()
    return BatchingIn(max_batch_size=found[0], max_wait_ms=found[1])


def set_batching(session: Session, model_name: str, batching: BatchingIn) -> ModelOut:
    get_model(session, model_name, with_versions=False)  # 404 for an unknown model
    session.execute(
        sa.update(RegisteredModel)
        .where(RegisteredModel.name == model_name)
        .values(**batching.model_dump(), updated_at=now())
    )
    return get_model(session, model_name)


def _latest_versions(session: Session, names: list[str]) -> dict[str, int]:
    rows = session.execute(
        sa.select(ModelVersion.model_name, sa.func.max(ModelVersion.version))
        .where(ModelVersion.model_name.in_(names))
        .group_by(ModelVersion.model_name)
    )
    return {name: int(v) for name, v in rows}


def get_model(session: Session, model_name: str, *, with_versions: bool = True) -> ModelOut:
    row = session.get(RegisteredModel, model_name)
    if row is None:
        raise NotFound(f"no model '{model_name}'", field="model_name")
    versions = None
    if with_versions:
        versions = [
            _version_out(v)
            for v in session.scalars(
                sa.select(ModelVersion)
                .where(ModelVersion.model_name == model_name)
                .order_by(ModelVersion.version)
            )
        ]
    return ModelOut(
        name=row.name,
        created_at=row.created_at,
        updated_at=row.updated_at,
        latest_version=_latest_versions(session, [row.name]).get(row.name),
        max_batch_size=row.max_batch_size,
        max_wait_ms=row.max_wait_ms,
        versions=versions,
    )


def list_models(session: Session, *, limit: int = 50, offset: int = 0) -> ModelPage:
    total = session.scalar(sa.select(sa.func.count()).select_from(RegisteredModel)) or 0
    rows = list(
        session.scalars(
            sa.select(RegisteredModel).order_by(RegisteredModel.name).limit(limit).offset(offset)
        )
    )
    latest = _latest_versions(session, [r.name for r in rows])
    items = [
        ModelOut(
            name=r.name,
            created_at=r.created_at,
            updated_at=r.updated_at,
            latest_version=latest.get(r.name),
            max_batch_size=r.max_batch_size,
            max_wait_ms=r.max_wait_ms,
        )
        for r in rows
    ]
    return ModelPage(items=items, total=total, limit=limit, offset=offset)
