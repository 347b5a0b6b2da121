"""A batch prediction's output: ``GET /v1/jobs/{id}/output``, the Parquet file its worker
wrote (``workers.batch_predict``), as Parquet or, converted a batch at a time, as CSV.

Parquet (``Accept: application/vnd.apache.parquet``, the default) is the stored file as it
is: streamed from a local store, or, from an S3 store, a 303 to a pre-signed URL so that
the bytes never pass through the API. CSV is written while it is read, one record batch
after another, so that the API never holds the output in memory (from S3, the object is
first copied to a temporary file of the API's machine)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from api.auth import JobsRead, visible
from shared.artifacts import ArtifactStore, open_store
from shared.db import job_reads
from shared.db.session import read_scope
from shared.errors import Conflict, InvalidSpec, ModelLoadError, NotFound
from shared.jobstate import JobKind, JobState
from shared.schemas import ErrorOut, JobOut

PARQUET = "application/vnd.apache.parquet"
CSV = "text/csv"
# Rows per record batch converted to CSV: a few MB of text at a time.
CSV_BATCH_ROWS = 16_384
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422)
}
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Accept = Annotated[
    str | None,
    Header(description=f"{PARQUET} (the default) or {CSV}"),
]


def media_type(accept: str | None) -> str:
    """Parquet or CSV, whichever ``accept`` prefers (by its q-values, Parquet on a tie);
    ``InvalidSpec`` naming Accept when it takes neither."""
    best: tuple[float, int, str] | None = None
    for item in (accept or "*/*").split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        for offered, rank in ((PARQUET, 1), (CSV, 0)):
            fits = kind in (offered, "*/*", f"{offered.split('/')[0]}/*")
            if fits and q > 0 and (best is None or (q, rank) > best[:2]):
                best = (q, rank, offered)
    if best is None:
        raise InvalidSpec(f"the output is served as {PARQUET} or {CSV}", field="Accept")
    return best[2]


def _output(job_id: str, who: Any) -> dict[str, Any]:
    with read_scope() as s:
        job = visible(job_reads.get_job(s, job_id), who)
    return output_of(job)


def output_of(job: JobOut) -> dict[str, Any]:
    """The output a job's result records: NotFound for a job that makes none (or ended
    without one), Conflict while it is still to come."""
    scored = job.kind is JobKind.predict and job.spec.get("dataset") is not None
    if not scored:
        raise NotFound(
            f"job '{job.id}' has no output: only a prediction over a data set writes one",
            field="job_id",
        )
    if not job.state.is_terminal():
        raise Conflict(
            f"job '{job.id}' is {job.state.value}: its output is ready when it succeeds",
            field="job_id",
        )
    output = (job.result or {}).get("output")
    if job.state is not JobState.succeeded or not isinstance(output, dict):
        raise NotFound(f"job '{job.id}' {job.state.value} without an output", field="job_id")
    return output


@router.get(
    "/{job_id}/output",
    responses={
        **ERRORS,
        200: {"content": {PARQUET: {}, CSV: {}}, "description": "the output"},
        303: {"description": "from an S3 store: a pre-signed URL of the Parquet file"},
    },
    response_class=Response,
)
def get_output(job_id: str, who: JobsRead, accept: Accept = None) -> Response:
    """A batch prediction's output, its rows in the data set's order: Parquet by default,
    or CSV with ``Accept: text/csv``. 409 while the job runs, 404 for a job without one."""
    kind = media_type(accept)
    output = _output(job_id, who)
    store = open_store()
    key = _key(store, output["uri"], job_id)
    name = f"{job_id}.{'parquet' if kind == PARQUET else 'csv'}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    local = store.local_path(key)
    if kind == PARQUET:
        if local is None:
            url = store.presign(key)
            if url is not None:
                return RedirectResponse(url, status_code=303)
        path = local or _fetched(store, key, job_id)
        if not path.is_file():
            raise _missing(job_id)
        headers = {**disposition, "X-Checksum-Sha256": str(output.get("sha256", ""))}
        cleanup = None if local is not None else BackgroundTask(path.unlink, missing_ok=True)
        return FileResponse(path, media_type=PARQUET, headers=headers, background=cleanup)
    if local is not None and not local.is_file():
        raise _missing(job_id)
    path, temporary = (local, False) if local is not None else (_fetched(store, key, job_id), True)
    return StreamingResponse(
        _csv(path, temporary), media_type=f"{CSV}; charset=utf-8", headers=disposition
    )


def _key(store: ArtifactStore, uri: str, job_id: str) -> str:
    try:
        return store.key_of(uri)
    except ModelLoadError:
        raise _missing(job_id) from None


def _missing(job_id: str) -> NotFound:
    return NotFound(f"the output of job '{job_id}' is missing from the artifact store")


def _fetched(store: ArtifactStore, key: str, job_id: str) -> Path:
    """A store without local files: the object copied to a temporary file here."""
    fd, name = tempfile.mkstemp(prefix="tq-output-", suffix=".parquet")
    os.close(fd)
    path = Path(name)
    try:
        store.get_file(key, path)
    except ModelLoadError:
        path.unlink(missing_ok=True)
        raise _missing(job_id) from None
    return path


def _csv(path: Path, temporary: bool) -> Iterator[bytes]:
    """The Parquet file as CSV with a header line, one record batch at a time."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as parquet:
            first = True
            for batch in parquet.iter_batches(batch_size=CSV_BATCH_ROWS):
                sink = pa.BufferOutputStream()
                pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=first))
                first = False
                yield sink.getvalue().to_pybytes()
            if first:  # no rows: the header alone
                sink = pa.BufferOutputStream()
                pacsv.write_csv(parquet.schema_arrow.empty_table(), sink)
                yield sink.getvalue().to_pybytes()
    finally:
        if temporary:
            path.unlink(missing_ok=True)
