"""The data layer: every query the API and the workers make. Functions take a session
(``session_scope`` commits) and return pydantic objects, never ORM rows."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.jobstate import JobKind, JobState, now, transition
from shared.schemas import JobOut, JobPage, ModelOut, ModelPage, ModelVersionOut

from .models import Job, ModelVersion, RegisteredModel


def _job_out(row: Job) -> JobOut:
    return JobOut.model_validate(row, from_attributes=True)


def _version_out(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut.model_validate(row, from_attributes=True)


# --- jobs ------------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    kind: JobKind,
    model_name: str,
    spec: dict[str, Any],
    queue: str,
    model_version: int | None = None,
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
        max_attempts=3,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(row)
    session.flush()
    return _job_out(row)


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
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    where = []
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


def claim_job(session: Session, job_id: str, worker: str) -> JobOut | None:
    """Take a queued job for ``worker``; None when it is not there to take."""
    moved = transition(
        session,
        job_id,
        JobState.running,
        worker=worker,
        attempts=Job.attempts + 1,
        heartbeat_at=now(),
    )
    return get_job(session, job_id) if moved else None


def set_progress(session: Session, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
    """Record progress of a running job; False when the job is no longer this worker's."""
    result = session.execute(
        sa.update(Job)
        .where(
            Job.id == job_id,
            Job.worker == worker,
            Job.state.in_([JobState.running, JobState.cancelling]),
        )
        .values(progress=progress, heartbeat_at=now(), updated_at=now())
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def finish_job(
    session: Session,
    job_id: str,
    state: JobState,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    model_version: int | None = None,
) -> bool:
    values: dict[str, Any] = {"result": result, "error": error}
    if model_version is not None:
        values["model_version"] = model_version
    return transition(session, job_id, state, **values)


# --- models ----------------------------------------------------------------------------


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
    retries: int = 5,
) -> ModelVersionOut:
    """Add version N+1 of a model. The unique (name, version) constraint settles races
    between workers: the loser retries with the next number."""
    for _ in range(retries):
        stamp = now()
        try:
            with session.begin_nested():
                if session.get(RegisteredModel, model_name) is None:
                    session.add(
                        RegisteredModel(name=model_name, created_at=stamp, updated_at=stamp)
                    )
                    session.flush()
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
        )
        for r in rows
    ]
    return ModelPage(items=items, total=total, limit=limit, offset=offset)
