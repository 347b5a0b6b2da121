"""The artifact store: model weights, manifests and checkpoints, addressed by key under one
root.

Two kinds, chosen by ``TORCHQUEUE_ARTIFACTS_URL`` (see :func:`open_store`):

- a local directory (the default, or ``file://``): writes are atomic (write a temporary
  file, then rename), so a reader never sees half a file and a crash leaves the old file
  whole;
- ``s3://bucket/prefix``, for workers on several machines: each write is one S3 PUT (or,
  past 100 MB, one multipart upload), which S3 makes visible all at once or not at all.
  The endpoint and credentials come from the ``TORCHQUEUE_S3_*`` settings, else from
  s3fs's own defaults (the environment, an instance role). s3fs is imported only when
  such a store is opened. An endpoint that cannot be reached raises ``Unavailable``.

Keys are checked by the same rule in both before anything is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from shared.config import get_settings
from shared.errors import ModelLoadError, Unavailable

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
# S3's rule for bucket names (lower case, digits, dots and hyphens; 3 to 63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"bad artifact key {key!r}")
    return key


class ArtifactStore(Protocol):
    """What workers need from a store: bytes under validated keys, and URIs for the registry."""

    def uri(self, key: str) -> str: ...

    def key_of(self, uri: str) -> str: ...

    def put_bytes(self, key: str, data: bytes) -> str: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def put_file(self, key: str, path: Path) -> str:
        """Store the file at ``path`` under ``key`` (moved where it can be: the caller
        does not use ``path`` again); return its URI."""
        ...

    def get_file(self, key: str, dest: Path) -> None:
        """Copy the object at ``key`` to the local file ``dest`` (written whole, or not)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's own file, where the store is a local directory: read it in place."""
        ...

    def presign(self, key: str, seconds: int = 3600) -> str | None:
        """A URL that reads the object without credentials for ``seconds``, where the store
        makes one (S3); None for a local directory."""
        ...


def _copy_whole(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` through a temporary file beside it: ``dest`` is the old
    file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

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

    def put_file(self, key: str, path: Path) -> str:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)  # the same file system: a rename, nothing copied
        except OSError:
            _copy_whole(path, dest)
        return self.uri(key)

    def get_file(self, key: str, dest: Path) -> None:
        source = self.local_path(key)
        if source is None or not source.is_file():
            raise ModelLoadError(f"artifact {self.uri(key)} is missing")
        _copy_whole(source, dest)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presign(self, key: str, seconds: int = 3600) -> str | None:
        return None


class _S3Files(Protocol):
    """The part of ``s3fs.S3FileSystem`` (untyped) that the S3 store calls."""

    def pipe_file(self, path: str, data: bytes) -> Any: ...

    def cat_file(self, path: str, *, max_concurrency: int) -> Any: ...

    def info(self, path: str) -> Any: ...

    def rm_file(self, path: str) -> Any: ...

    def put_file(self, lpath: str, rpath: str) -> Any: ...

    def get_file(self, rpath: str, lpath: str) -> Any: ...

    def sign(self, path: str, expiration: int) -> Any: ...


def s3_filesystem() -> _S3Files:
    """An ``s3fs.S3FileSystem`` set from the ``TORCHQUEUE_S3_*`` settings, where set.

    Listings are never cached: other machines write to the same bucket, and a cached
    listing would answer for an object that changed since.
    """
    import s3fs  # only a process that opens an s3:// store needs s3fs

    settings = get_settings()
    key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    if (key_id is None) != (secret is None):
        raise ValueError(
            "set both TORCHQUEUE_S3_ACCESS_KEY_ID and TORCHQUEUE_S3_SECRET_ACCESS_KEY, or neither"
        )
    options: dict[str, Any] = {"use_listings_cache": False}
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if key_id is not None and secret is not None:
        options["key"] = key_id
        options["secret"] = secret.get_secret_value()
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    files: _S3Files = s3fs.S3FileSystem(**options)
    return files


class S3ArtifactStore:
    """Artifacts as objects under ``s3://bucket/prefix/``."""

    def __init__(self, bucket: str, prefix: str = "", files: _S3Files | None = None) -> None:
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket):
            raise ValueError(f"bad S3 bucket name {bucket!r}")
        if prefix:
            _check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.root = f"s3://{bucket}/{prefix}".rstrip("/")
        self._files = files if files is not None else s3_filesystem()

    @classmethod
    def from_url(cls, url: str) -> S3ArtifactStore:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or parsed.query or parsed.fragment or parsed.params:
            raise ValueError(f"an S3 artifact store is s3://bucket/prefix, not {url!r}")
        if not _BUCKET.match(parsed.netloc):
            # The netloc is not echoed: it could hold credentials (s3://user:pw@bucket).
            raise ValueError("an S3 artifact store URL needs a valid bucket: s3://bucket/prefix")
        prefix = parsed.path.strip("/")
        if prefix and (not _KEY.match(prefix) or ".." in prefix.split("/")):
            raise ValueError(f"bad prefix in the S3 artifact store URL {url!r}")
        return cls(parsed.netloc, prefix)

    def _path(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.bucket}/{self.prefix}/{key}" if self.prefix else f"{self.bucket}/{key}"

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """An endpoint that cannot be reached (after s3fs's and botocore's retries) is
        Unavailable, a transient error: the worker gives the job back rather than fail it."""
        from botocore.exceptions import ConnectionError as Unreachable
        from botocore.exceptions import HTTPClientError

        try:
            yield
        except (Unreachable, HTTPClientError) as exc:
            raise Unavailable(f"the artifact store {self.root} cannot be reached: {exc}") from exc

    def uri(self, key: str) -> str:
        return f"s3://{self._path(key)}"

    def key_of(self, uri: str) -> str:
        base = f"{self.root}/"
        key = uri[len(base) :] if uri.startswith(base) else ""
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ModelLoadError(f"artifact {uri} is outside the store {self.root}")
        return key

    def put_bytes(self, key: str, data: bytes) -> str:
        # One call: a single PUT (a multipart upload past 100 MB, completed in one request).
        # S3 shows the new object whole or not at all, and a failed upload leaves the old one.
        path = self._path(key)
        with self._reaching():
            self._files.pipe_file(path, data)
        return self.uri(key)

    def exists(self, key: str) -> bool:
        # Not s3fs's isfile(), which answers False for any error (a refused credential, an
        # unreachable endpoint): only "no such object" is False here.
        path = self._path(key)
        try:
            with self._reaching():
                info = self._files.info(path)
        except FileNotFoundError:
            return False
        return bool(info.get("type") == "file")

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError), self._reaching():  # S3 answers 204 anyway
            self._files.rm_file(path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            # One GET (no concurrent ranged reads), so an object replaced while it is read
            # never comes back as a mixture of the old and the new.
            with self._reaching():
                data = self._files.cat_file(path, max_concurrency=1)
        except FileNotFoundError:
            raise ModelLoadError(f"artifact {self.uri(key)} is missing") from None
        return bytes(data)

    def put_file(self, key: str, path: Path) -> str:
        # s3fs uploads a large file in parts and completes it in one request: the object
        # appears whole or not at all.
        with self._reaching():
            self._files.put_file(str(path), self._path(key))
        path.unlink(missing_ok=True)
        return self.uri(key)

    def get_file(self, key: str, dest: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        try:
            with self._reaching():
                self._files.get_file(self._path(key), tmp)
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise ModelLoadError(f"artifact {self.uri(key)} is missing") from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return None

    def presign(self, key: str, seconds: int = 3600) -> str | None:
        with self._reaching():
            return str(self._files.sign(self._path(key), expiration=seconds))


def open_store(url: str | None = None) -> ArtifactStore:
    """The store at ``url`` (default: ``TORCHQUEUE_ARTIFACTS_URL``, else home/artifacts):
    a local path or ``file://`` URL, or ``s3://bucket/prefix``."""
    url = url or get_settings().artifacts_location
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalArtifactStore(Path(parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        return S3ArtifactStore.from_url(url)
    raise ValueError(
        f"unsupported artifact store {parsed.scheme}://…: use a local directory, "
        "a file:// URL or s3://bucket/prefix"
    )
