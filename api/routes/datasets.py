"""Data sets: upload a file (or register a URL the workers read), list, describe, delete.

An upload is the request's body, streamed to a temporary file while its sha256 is taken:
the API never holds it in memory. ``shared.ingest`` then checks it and writes its stored
form (Parquet for tables; npy/npz arrays as they are) batch by batch, in a thread, so the
event loop keeps serving; the stored file goes into the artifact store, and only then is
the version recorded. A malformed file, a client that goes away midway, or a failure at
any step leaves nothing behind: no row, no stored file, no temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import Field
from starlette.requests import ClientDisconnect

from api.auth import require
from api.deps import SessionDep
from shared.artifacts import open_store
from shared.auth import Principal
from shared.config import get_settings
from shared.db import datasets
from shared.db.session import session_scope
from shared.errors import InvalidSpec, TorchqueueError
from shared.schemas import (
    MAX_OFFSET,
    MAX_VERSION,
    NAME_PATTERN,
    DatasetOut,
    DatasetPage,
    DatasetVersionOut,
    ErrorOut,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 503)
}
router = APIRouter(prefix="/v1", tags=["datasets"], responses=ERRORS)
DatasetsRead = Annotated[Principal, Depends(require("datasets:read"))]
DatasetsWrite = Annotated[Principal, Depends(require("datasets:write"))]
Name = Annotated[str, Query(pattern=NAME_PATTERN, description="the data set's name")]
Version = Annotated[
    Annotated[int, Field(ge=1, le=MAX_VERSION)] | Literal["latest"],
    PathParam(description="a number, or latest"),
]


def incoming_dir() -> Path:
    """Where uploads are written while they stream in: beside the artifacts of a local
    store, so that the stored file is renamed into place rather than copied."""
    settings = get_settings()
    store = open_store()
    local = store.local_path("incoming")
    path = local.parent / ".incoming" if local is not None else settings.home_dir / "incoming"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A directory of its own for one upload, removed whatever happens."""
    with tempfile.TemporaryDirectory(dir=incoming_dir(), prefix="upload-") as tmp:
        yield Path(tmp)


async def _receive(request: Request, dest: Path) -> str:
    """Write the body to ``dest`` as it arrives; return its sha256."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as f:
        async for chunk in request.stream():
            digest.update(chunk)
            f.write(chunk)
            size += len(chunk)
    if size == 0:
        raise InvalidSpec("the file is empty", field="file")
    return digest.hexdigest()


def _store_and_record(
    who: Principal, name: str, src: Path, fmt: str, label: str | None, upload_sha256: str
) -> DatasetVersionOut:
    """Check and convert the upload, store it, record the version: in that order, and
    undone in reverse when a later step fails."""
    from shared.ingest import ingest

    dest = src.with_name("stored")
    inspected = ingest(src, fmt, dest, label=label)
    store = open_store()
    key = f"datasets/{name}/{uuid.uuid4().hex}.{inspected.format}"
    uri = store.put_file(key, dest)
    try:
        with session_scope() as s:
            return datasets.create_version(
                s,
                name=name,
                source="upload",
                format=inspected.format,
                uri=uri,
                created_by=who.key_id,
                admin=who.is_admin,
                sha256=inspected.sha256,
                upload_sha256=upload_sha256,
                size=inspected.bytes,
                rows=inspected.rows,
                columns=inspected.columns,
                value_counts=inspected.value_counts,
            )
    except BaseException:
        store.delete(key)
        raise


def _register_url(who: Principal, name: str, url: str, fmt: str | None) -> DatasetVersionOut:
    from shared.formats import format_of
    from shared.url_sources import check_url

    checked = check_url(url, get_settings().url_prefixes)
    with session_scope() as s:
        return datasets.create_version(
            s,
            name=name,
            source="url",
            format=format_of(fmt, None, checked),
            uri=checked,
            created_by=who.key_id,
            admin=who.is_admin,
        )


@router.post("/datasets", status_code=201)
async def upload_dataset(
    request: Request,
    who: DatasetsWrite,
    name: Name,
    format: Annotated[
        str | None,
        Query(
            description="csv, parquet, jsonl, npy or npz (default: from the "
            "content type, else the file name)"
        ),
    ] = None,
    filename: Annotated[str | None, Query(max_length=1024)] = None,
    label: Annotated[
        str | None,
        Query(max_length=256, description="a column that must be there, without nulls"),
    ] = None,
    url: Annotated[
        str | None,
        Query(
            max_length=2048,
            description="instead of a body: where the workers read the data set "
            "(under a prefix of TORCHQUEUE_DATASET_URL_PREFIXES)",
        ),
    ] = None,
) -> DatasetVersionOut:
    """Add a version of data set ``name``: the request's body is the file (CSV with a
    header, Parquet, JSON Lines, npy or npz), or ``url`` names where it is. A malformed
    file is refused (422) naming the row and column, or the array, at fault."""
    if url is not None:
        return await run_in_threadpool(_register_url, who, name, url, format)
    from shared.formats import format_of

    fmt = format_of(format, request.headers.get("content-type"), filename)
    with _scratch() as tmp:
        src = tmp / "upload"
        try:
            upload_sha256 = await _receive(request, src)
        except ClientDisconnect:
            # No one hears this answer (nor, past the size limit, the 413 already sent
            # in its place); the scratch directory goes, and nothing was recorded.
            raise InvalidSpec(
                "the upload ended before the whole file arrived", field="file"
            ) from None
        return await run_in_threadpool(_store_and_record, who, name, src, fmt, label, upload_sha256)


@router.get("/datasets")
def list_datasets(
    session: SessionDep,
    who: DatasetsRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DatasetPage:
    """A key's own data sets (admin: all), by name."""
    return datasets.list_datasets(session, who.viewer, limit=limit, offset=offset)


@router.get("/datasets/{name}")
def get_dataset(name: str, session: SessionDep, who: DatasetsRead) -> DatasetOut:
    """A data set with every version."""
    return datasets.get_dataset(session, name, who.viewer)


@router.get("/datasets/{name}/versions/{version}")
def get_dataset_version(
    name: str, version: Version, session: SessionDep, who: DatasetsRead
) -> DatasetVersionOut:
    return datasets.get_version(session, name, version, who.viewer)


@router.delete("/datasets/{name}/versions/{version}", status_code=204)
def delete_dataset_version(
    name: str,
    version: Annotated[int, PathParam(ge=1, le=MAX_VERSION)],
    who: DatasetsWrite,
) -> Response:
    """Delete a version and its stored file. Refused (409) while a model version trained
    on it is registered: its lineage names this version."""
    with session_scope() as s:
        gone = datasets.delete_version(s, name, version, who.viewer)
    if gone.source != "url":
        store = open_store()
        with contextlib.suppress(TorchqueueError, ValueError):
            store.delete(store.key_of(gone.uri))
    return Response(status_code=204)
