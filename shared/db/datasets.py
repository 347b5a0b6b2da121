"""Data sets: the one module that writes them. A data set is a name owned by the API key
that created it, with versions 1, 2, … (assigned as model versions are: under a lock and a
unique constraint). A version is a file in the artifact store (an upload, or a job's
inline rows) or a URL the workers read, whose sha256, rows and columns the first read
records. Functions take a session and return pydantic objects, never ORM rows.

``viewer`` is the key id of the caller, or None for one that sees everything (admin, and
the workers): a key sees its own data sets only; others' do not exist for it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, Forbidden, NotFound
from shared.jobstate import now
from shared.schemas import DatasetFile, DatasetOut, DatasetPage, DatasetVersionOut

from .models import Dataset, DatasetVersion, ModelVersion

Version = int | str


def _version_out(row: DatasetVersion) -> DatasetVersionOut:
    return DatasetVersionOut(
        name=row.dataset_name,
        version=row.version,
        source=row.source,
        format=row.format,
        uri=row.uri,
        sha256=row.sha256,
        bytes=row.bytes,
        rows=row.rows,
        columns=row.columns,
        value_counts=row.value_counts,
        upload_sha256=row.upload_sha256,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def file_of(version: DatasetVersionOut) -> DatasetFile:
    """What a worker needs to read a version."""
    return DatasetFile(
        name=version.name,
        version=version.version,
        uri=version.uri,
        format=version.format,
        sha256=version.sha256,
        source=version.source,
    )


def _dataset(session: Session, name: str, viewer: str | None) -> Dataset:
    row = session.get(Dataset, name)
    if row is None or (viewer is not None and row.created_by != viewer):
        raise NotFound(f"no data set '{name}'", field="name")
    return row


def create_version(
    session: Session,
    *,
    name: str,
    source: str,
    format: str,
    uri: str,
    created_by: str | None,
    admin: bool,
    sha256: str | None = None,
    upload_sha256: str | None = None,
    size: int | None = None,
    rows: int | None = None,
    columns: list[dict[str, Any]] | None = None,
    value_counts: dict[str, dict[str, int]] | None = None,
    retries: int = 5,
) -> DatasetVersionOut:
    """Add version N+1 of data set ``name``, creating the name for ``created_by`` if it is
    new. A name another key created refuses a key that is not ``admin``."""
    for _ in range(retries):
        stamp = now()
        try:
            with session.begin_nested():
                owner = session.get(Dataset, name)
                if owner is None:
                    session.add(
                        Dataset(
                            name=name, created_by=created_by, created_at=stamp, updated_at=stamp
                        )
                    )
                    session.flush()
                elif owner.created_by != created_by and not admin:
                    raise Forbidden(
                        f"the data set '{name}' belongs to another key; choose another name",
                        field="name",
                    )
                session.execute(
                    sa.select(Dataset.name).where(Dataset.name == name).with_for_update()
                )
                latest = session.scalar(
                    sa.select(sa.func.max(DatasetVersion.version)).where(
                        DatasetVersion.dataset_name == name
                    )
                )
                row = DatasetVersion(
                    dataset_name=name,
                    version=(latest or 0) + 1,
                    source=source,
                    format=format,
                    uri=uri,
                    sha256=sha256,
                    upload_sha256=upload_sha256,
                    bytes=size,
                    rows=rows,
                    columns=columns,
                    value_counts=value_counts,
                    created_by=created_by,
                    created_at=stamp,
                )
                session.add(row)
                session.execute(
                    sa.update(Dataset).where(Dataset.name == name).values(updated_at=stamp)
                )
                session.flush()
            return _version_out(row)
        except IntegrityError:
            continue
    raise Conflict(f"could not assign a version to data set '{name}'; try again")


def _version_row(session: Session, name: str, version: Version) -> DatasetVersion | None:
    query = sa.select(DatasetVersion).where(DatasetVersion.dataset_name == name)
    if version == "latest":
        query = query.order_by(DatasetVersion.version.desc()).limit(1)
    else:
        query = query.where(DatasetVersion.version == int(version))
    return session.scalars(query).first()


def get_version(
    session: Session, name: str, version: Version, viewer: str | None, *, prefix: str = ""
) -> DatasetVersionOut:
    """A version (a number, or latest). 404 naming ``{prefix}name`` for a data set the
    viewer cannot see, ``{prefix}version`` for a version it does not have."""
    try:
        _dataset(session, name, viewer)
    except NotFound as exc:
        raise NotFound(exc.detail, field=f"{prefix}name") from None
    row = _version_row(session, name, version)
    if row is None:
        which = "no version" if version == "latest" else f"no version {version}"
        raise NotFound(f"data set '{name}' has {which}", field=f"{prefix}version")
    return _version_out(row)


def get_dataset(session: Session, name: str, viewer: str | None) -> DatasetOut:
    row = _dataset(session, name, viewer)
    versions = [
        _version_out(v)
        for v in session.scalars(
            sa.select(DatasetVersion)
            .where(DatasetVersion.dataset_name == name)
            .order_by(DatasetVersion.version)
        )
    ]
    return DatasetOut(
        name=row.name,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        latest_version=versions[-1].version if versions else None,
        versions=versions,
    )


def list_datasets(
    session: Session, viewer: str | None, *, limit: int = 50, offset: int = 0
) -> DatasetPage:
    mine = sa.true() if viewer is None else Dataset.created_by == viewer
    total = session.scalar(sa.select(sa.func.count()).select_from(Dataset).where(mine)) or 0
    rows = list(
        session.scalars(
            sa.select(Dataset).where(mine).order_by(Dataset.name).limit(limit).offset(offset)
        )
    )
    latest = dict(
        session.execute(
            sa.select(DatasetVersion.dataset_name, sa.func.max(DatasetVersion.version))
            .where(DatasetVersion.dataset_name.in_([r.name for r in rows]))
            .group_by(DatasetVersion.dataset_name)
        ).all()
    )
    items = [
        DatasetOut(
            name=r.name,
            created_by=r.created_by,
            created_at=r.created_at,
            updated_at=r.updated_at,
            latest_version=latest.get(r.name),
        )
        for r in rows
    ]
    return DatasetPage(items=items, total=total, limit=limit, offset=offset)


def trained_on(session: Session, name: str, version: int) -> list[str]:
    """The model versions (``model:N``) trained on a data set version."""
    rows = session.execute(
        sa.select(ModelVersion.model_name, ModelVersion.version)
        .where(ModelVersion.dataset["name"].as_string() == name)
        .where(ModelVersion.dataset["version"].as_integer() == version)
        .order_by(ModelVersion.model_name, ModelVersion.version)
    )
    return [f"{m}:{v}" for m, v in rows]


def delete_version(
    session: Session, name: str, version: int, viewer: str | None
) -> DatasetVersionOut:
    """Delete a version's record; the caller deletes its bytes after the commit. A version
    that a model version was trained on is refused (409): the lineage of a registered
    model must stay readable, and its data must stay there to train it again."""
    found = get_version(session, name, version, viewer)
    models = trained_on(session, name, found.version)
    if models:
        shown = ", ".join(models[:10]) + (" …" if len(models) > 10 else "")
        raise Conflict(
            f"data set '{name}' version {version} trained the model versions {shown}; "
            "it is kept while they are",
            field="version",
        )
    session.execute(
        sa.delete(DatasetVersion)
        .where(DatasetVersion.dataset_name == name)
        .where(DatasetVersion.version == found.version)
    )
    return found


def record_first_read(
    session: Session,
    name: str,
    version: int,
    *,
    sha256: str,
    size: int,
    rows: int,
    columns: list[dict[str, Any]],
    value_counts: dict[str, dict[str, int]],
) -> str:
    """Record what a URL source held when a worker first read it; return the sha256 on
    record (the one just given, or an earlier reader's, which the caller compares)."""
    session.execute(
        sa.update(DatasetVersion)
        .where(DatasetVersion.dataset_name == name)
        .where(DatasetVersion.version == version)
        .where(DatasetVersion.sha256.is_(None))
        .values(sha256=sha256, bytes=size, rows=rows, columns=columns, value_counts=value_counts)
    )
    on_record = session.scalar(
        sa.select(DatasetVersion.sha256)
        .where(DatasetVersion.dataset_name == name)
        .where(DatasetVersion.version == version)
    )
    if on_record is None:
        raise NotFound(f"data set '{name}' has no version {version}", field="dataset.version")
    return str(on_record)
