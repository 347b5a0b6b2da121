"""The model registry: registered models, their versions (1, 2, … per name, assigned
under a lock and a unique constraint) and each model's batching settings. Functions take
a session (``session_scope`` commits) and return pydantic objects, never ORM rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.jobstate import now
from shared.schemas import BatchingIn, ModelOut, ModelPage, ModelVersionOut

from .models import ModelVersion, RegisteredModel


def _version_out(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut.model_validate(row, from_attributes=True)


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
    dataset: dict[str, Any] | None = None,
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
                    dataset=dataset,
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


def families_of(session: Session, model_name: str) -> dict[str, str]:
    """The family of each of a model's versions, by number, and of ``latest``."""
    rows = session.execute(
        sa.select(ModelVersion.version, ModelVersion.family)
        .where(ModelVersion.model_name == model_name)
        .order_by(ModelVersion.version)
    ).all()
    out = {str(version): family for version, family in rows}
    if rows:
        out["latest"] = rows[-1][1]
    return out


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
