"""A data set version's file on this machine, its bytes checked: the artifact store's own
file where the store is a local directory, else a copy in this worker's cache.

The cache (home/dataset-cache) holds files named by sha256, at most
``settings.dataset_cache_mb`` together; the least recently used go first. Worker processes
on one machine share it: a file enters under a temporary name and is renamed into place
whole, a use touches its time, and eviction ignores a file another process removed first.
A reader keeps its file open (``pyarrow.parquet.ParquetFile``), so a file evicted while it
is read stays readable to it (Linux keeps an unlinked file until its last reader closes it).

A URL source (``source == "url"``) is read through fsspec (``s3://`` with the same settings
as the artifact store, others through ``fsspec.open``), every time, after the URL is checked
again against the operator's prefixes (``shared.url_sources``): its sha256 is computed as it
downloads, and the first read records it (with rows and columns) on the version; a read that
finds other bytes than the ones on record fails the job. A CSV or JSON Lines source is
converted to Parquet once per sha256 (``shared.ingest``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from shared.artifacts import open_store, s3_filesystem
from shared.config import get_settings
from shared.errors import BadData, InvalidSpec, ModelLoadError
from shared.ingest import ingest
from shared.schemas import DatasetFile
from shared.url_sources import check_url

CHUNK = 8 * 1024 * 1024
# A temporary file older than this belongs to no live writer: eviction may remove it.
STALE_TMP_SECONDS = 24 * 3600
_TMP = ".tmp-"
# Files already checked in this process, by path: (size, mtime_ns) -> sha256.
_checked: dict[Path, tuple[int, int, str]] = {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_sha256(path: Path) -> str:
    stat = path.stat()
    seen = _checked.get(path)
    if seen is not None and seen[:2] == (stat.st_size, stat.st_mtime_ns):
        return seen[2]
    digest = sha256_of(path)
    _checked[path] = (stat.st_size, stat.st_mtime_ns, digest)
    return digest


def cache_dir() -> Path:
    path = get_settings().home_dir / "dataset-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _incoming(name: str) -> Iterator[Path]:
    """A temporary path in the cache, renamed to ``name`` when the block ends, removed
    when it raises. The caller then calls ``evict``, once its own temporary files are
    gone (they count against the bound while they exist)."""
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=f"{_TMP}{name}.")
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
        os.replace(path, cache_dir() / name)
    finally:
        path.unlink(missing_ok=True)


def _touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def evict(keep: Path | None = None) -> list[Path]:
    """Remove the least recently used files until the cache is within its bound; never
    ``keep`` (the file just used). Returns what was removed."""
    bound = int(get_settings().dataset_cache_mb * 1024 * 1024)
    entries: list[tuple[float, int, Path]] = []
    now = time.time()
    for path in cache_dir().iterdir():
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.name.startswith(_TMP):
            if now - stat.st_mtime > STALE_TMP_SECONDS:
                path.unlink(missing_ok=True)
            else:
                bound -= stat.st_size  # being written: it counts, and stays
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries):
        if total <= bound:
            break
        if path == keep:
            continue
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


def local_copy(file: DatasetFile) -> Path:
    """The version's file (Parquet, npy or npz), read here and checked: ``BadData`` when
    it is missing, not allowed, or its bytes are not the ones on record. A URL source's
    sha256 is set on ``file`` once read, for the model's lineage."""
    if file.source == "url":
        return _from_url(file)
    where = _where(file)
    store = open_store()
    try:
        key = store.key_of(file.uri)
        path = store.local_path(key)
        if path is None:
            path = cache_dir() / f"{file.sha256}.{file.format}"
            if path.is_file():
                _touch(path)
            else:
                with _incoming(path.name) as tmp:
                    store.get_file(key, tmp)
                evict(keep=path)
        if not path.is_file():
            raise ModelLoadError(f"artifact {file.uri} is missing")
    except ModelLoadError:
        raise BadData(f"{where} is missing from the artifact store ({file.uri})") from None
    if _checked_sha256(path) != file.sha256:
        raise BadData(
            f"{where} changed since it was recorded: its bytes no longer match sha256 {file.sha256}"
        )
    return path


def _where(file: DatasetFile) -> str:
    return f"data set '{file.name}' version {file.version}"


def _open_url(url: str) -> IO[bytes]:
    if url.startswith("s3://"):
        return cast(IO[bytes], cast(Any, s3_filesystem()).open(url, "rb"))
    import fsspec

    return cast(IO[bytes], fsspec.open(url, "rb").open())


def _download(file: DatasetFile) -> tuple[Path, str, int]:
    """The URL's bytes in a temporary file of the cache, their sha256 and size."""
    where = _where(file)
    try:
        url = check_url(file.uri, get_settings().url_prefixes)
    except InvalidSpec as exc:
        raise BadData(f"{where} cannot be read from {file.uri}: {exc.detail}") from None
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=f"{_TMP}download.")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url) as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError | ValueError):
            raise BadData(f"{where} could not be read from {url}: {exc}") from None
        raise
    return Path(tmp), digest.hexdigest(), size


def _from_url(file: DatasetFile) -> Path:
    where = _where(file)
    tmp, sha256, size = _download(file)
    try:
        if file.sha256 is not None and file.sha256 != sha256:
            raise BadData(_changed(file, file.sha256, sha256))
        converted = "" if file.format == "parquet" else f".{file.format}"
        path = cache_dir() / f"{sha256}{converted}.parquet"
        if path.is_file() and file.sha256 is not None:
            _touch(path)
            return path
        described = _stored_form(file, tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    evict(keep=path)
    if file.sha256 is None:
        on_record = _record_first_read(file, sha256, size, described)
        if on_record != sha256:
            raise BadData(_changed(file, on_record, sha256))
        file.sha256 = sha256
    if not path.is_file():
        raise BadData(f"{where}: its converted copy left the cache while it was read; try again")
    return path


def _changed(file: DatasetFile, on_record: str, found: str) -> str:
    return (
        f"{_where(file)} changed at its source {file.uri}: the first read recorded sha256 "
        f"{on_record}, this read found {found}; register the new bytes as a new version"
    )


def _stored_form(file: DatasetFile, src: Path, dest: Path) -> dict[str, Any]:
    """Put the source's stored form (Parquet; npy/npz as they are) at ``dest`` in the
    cache, checked as an upload is; describe it."""
    where = f"{_where(file)} ({file.uri})"
    with _incoming(dest.name) as tmp:
        try:
            inspected = ingest(src, file.format, tmp)
        except InvalidSpec as exc:
            raise BadData(f"{where} cannot be used: {exc.detail} ({exc.field})") from None
    return {
        "rows": inspected.rows,
        "columns": inspected.columns,
        "value_counts": inspected.value_counts,
    }


def _record_first_read(file: DatasetFile, sha256: str, size: int, described: dict[str, Any]) -> str:
    from shared.db import datasets
    from shared.db.session import session_scope

    with session_scope() as session:
        return datasets.record_first_read(
            session, file.name, file.version, sha256=sha256, size=size, **described
        )
