"""The model registry: registered models, their versions (1, 2, … per name, assigned
under a lock and a unique constraint) and each model's batching settings; and the reads
of its aliases (``shared.db.aliases`` writes them): wherever a version is named, it is a
number, ``latest`` or an alias. Functions take a session (``session_scope`` commits) and
return pydantic objects, never ORM rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, NotFound
from shared.jobstate import now
from shared.schemas import BatchingIn, ModelOut, ModelPage, ModelVersionOut

from . import webhooks
from .models import Job, ModelAlias, ModelVersion, RegisteredModel


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
            made = _version_out(row)
            _tell_subscribers(session, made)
            return made
        except IntegrityError:
            continue
    raise Conflict(f"could not assign a version to model '{model_name}'; try again")


def _tell_subscribers(session: Session, version: ModelVersionOut) -> None:
    """A version was made: its event for the webhooks that want it, in this transaction."""
    if not webhooks.any_subscription(session):
        return
    owner = session.scalar(sa.select(Job.submitted_by).where(Job.id == version.job_id))
    data = version.model_dump(
        mode="json", include={"model_name", "version", "family", "job_id", "metrics"}
    )
    key = f"{version.model_name}:{version.version}"
    webhooks.record(session, "model.version.created", key, data, owner)


def _is_name(version: int | str) -> bool:
    """Whether ``version`` names a version (``latest`` or an alias) rather than numbers it."""
    return isinstance(version, str) and not version.isdigit()


def get_model_version(session: Session, model_name: str, version: int | str) -> ModelVersionOut:
    """A version by its number, ``latest``, or an alias; 404 naming ``model_name`` for an
    unknown model, ``version`` for a number or alias it does not have."""
    query = sa.select(ModelVersion).where(ModelVersion.model_name == model_name)
    if version == "latest":
        query = query.order_by(ModelVersion.version.desc()).limit(1)
    elif _is_name(version):
        query = query.join(
            ModelAlias,
            (ModelAlias.model_name == ModelVersion.model_name)
            & (ModelAlias.version == ModelVersion.version),
        ).where(ModelAlias.alias == version)
    else:
        query = query.where(ModelVersion.version == int(version))
    row = session.scalars(query).first()
    if row is None:
        get_model(session, model_name, with_versions=False)  # 404 for the model itself first
        what = f"no alias '{version}'" if _is_name(version) else f"no version {version}"
        raise NotFound(f"model '{model_name}' has {what}", field="version")
    return _version_out(row)


def version_number(session: Session, model_name: str, version: int | str) -> int | None:
    """The number that ``version`` (a number, ``latest`` or an alias) stands for now, in one
    indexed lookup; None for a name that stands for none (or an unknown model)."""
    if not _is_name(version):
        return int(version)
    if version == "latest":
        return latest_version(session, model_name)
    found = session.scalar(
        sa.select(ModelAlias.version).where(
            ModelAlias.model_name == model_name, ModelAlias.alias == version
        )
    )
    return int(found) if found is not None else None


def latest_version(session: Session, model_name: str) -> int | None:
    """The number of a model's latest version (None: no version, or no model)."""
    found = session.execute(
        sa.select(sa.func.max(ModelVersion.version)).where(ModelVersion.model_name == model_name)
    ).scalar()
    return int(found) if found is not None else None


def families_of(session: Session, model_name: str) -> dict[str, str]:
    """The family of each of a model's versions, by number, of ``latest`` and of each
    alias (its version's)."""
    rows = session.execute(
        sa.select(ModelVersion.version, ModelVersion.family)
        .where(ModelVersion.model_name == model_name)
        .order_by(ModelVersion.version)
    ).all()
    out = {str(version): family for version, family in rows}
    if rows:
        out["latest"] = rows[-1][1]
    for alias, version in _aliases(session, [model_name]).get(model_name, {}).items():
        if str(version) in out:
            out[alias] = out[str(version)]
    return out


def _aliases(session: Session, names: list[str]) -> dict[str, dict[str, int]]:
    """Each model's aliases and the versions they point at, by model name."""
    out: dict[str, dict[str, int]] = {}
    rows = session.execute(
        sa.select(ModelAlias.model_name, ModelAlias.alias, ModelAlias.version)
        .where(ModelAlias.model_name.in_(names))
        .order_by(ModelAlias.model_name, ModelAlias.alias)
    )
    for name, alias, version in rows:
        out.setdefault(name, {})[alias] = version
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
        aliases=_aliases(session, [row.name]).get(row.name, {}),
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
    aliases = _aliases(session, [r.name for r in rows])
    items = [
        ModelOut(
            name=r.name,
            created_at=r.created_at,
            updated_at=r.updated_at,
            latest_version=latest.get(r.name),
            max_batch_size=r.max_batch_size,
            max_wait_ms=r.max_wait_ms,
            aliases=aliases.get(r.name, {}),
        )
        for r in rows
    ]
    return ModelPage(items=items, total=total, limit=limit, offset=offset)
