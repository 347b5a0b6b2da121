"""The artifact store: model weights and manifests, addressed by key under one root.

A local directory by default. Writes are atomic (write a temporary file, then rename), so
a reader never sees half a file and a crash leaves the old file whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from shared.config import get_settings
from shared.errors import ModelLoadError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"bad artifact key {key!r}")
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_of(self, uri: str) -> str:
        path = Path(urlparse(uri).path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            raise ModelLoadError(f"artifact {uri} is outside the store {self.root}") from None

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(f"artifact {self.uri(key)} is missing") from None


def open_store(url: str | None = None) -> LocalArtifactStore:
    url = url or get_settings().artifacts_location
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalArtifactStore(Path(parsed.path if parsed.scheme else url))
    raise ValueError(f"unsupported artifact store {url!r}: use a local directory")
