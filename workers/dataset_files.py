"""A data set version's file on this machine, its bytes checked against the sha256 on
record: the artifact store's own file where the store is a local directory, else a copy in
this worker's cache under home/dataset-cache, named by sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from shared.artifacts import open_store
from shared.config import get_settings
from shared.errors import BadData, ModelLoadError
from shared.schemas import DatasetFile

CHUNK = 8 * 1024 * 1024
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


def local_copy(file: DatasetFile) -> Path:
    """The version's file, read here and checked: ``BadData`` when it is missing or its
    bytes are not the ones on record."""
    where = f"data set '{file.name}' version {file.version}"
    if file.source == "url":
        raise BadData(f"{where} is a URL source, which this worker cannot read yet")
    store = open_store()
    try:
        key = store.key_of(file.uri)
        path = store.local_path(key)
        if path is None:
            path = cache_dir() / f"{file.sha256}.{file.format}"
            if not path.is_file():
                store.get_file(key, path)
        if not path.is_file():
            raise ModelLoadError(f"artifact {file.uri} is missing")
    except ModelLoadError:
        raise BadData(f"{where} is missing from the artifact store ({file.uri})") from None
    if _checked_sha256(path) != file.sha256:
        raise BadData(
            f"{where} changed since it was recorded: its bytes no longer match sha256 {file.sha256}"
        )
    return path
