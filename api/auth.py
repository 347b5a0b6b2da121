"""Who may call: every ``/v1`` route takes an API key (``Authorization: Bearer KEY``) with
the scope the route needs. 401 without a valid key, 403 with a key that lacks the scope.

The key is read through FastAPI's ``HTTPBearer``, so that the OpenAPI schema declares it
and ``/docs`` offers its Authorize button; the answers without a key stay ours.

A valid key's principal is kept in the process for ``TORCHQUEUE_AUTH_CACHE_SECONDS``, so
that most requests read no database: a key revoked (or changed) by another process still
works here until then; one revoked through this process's own sessions stops at its commit."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event
from sqlalchemy.orm import object_session

from shared.auth import Principal
from shared.config import get_settings
from shared.db import keys
from shared.db.models import ApiKey
from shared.db.session import read_scope
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.schemas import JobOut

ANONYMOUS = Principal("anonymous", "authentication off", frozenset({"admin"}))
BOOTSTRAP = Principal("bootstrap", "bootstrap key", frozenset({"admin"}))


# auto_error off: a missing or malformed header comes through as None, and is answered
# below with our own 401.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key (`torchqueue keys create`): `Authorization: Bearer KEY`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class KeyCache:
    """Principals of valid keys by the sha256 of the key (never the key), each served for
    at most ``ttl`` seconds after the database read that found it. At most ``size``
    entries, the first added out first. Invalid keys are never kept: a key created a moment
    ago works at once, and nothing a caller sends holds a place here."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        # Reads stay on the event loop without it; changes may come from any thread
        # (a revocation commits wherever its session runs).
        self._lock = threading.Lock()
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, ttl: float) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if time.monotonic() - entry[0] < ttl:
            return entry[1]
        with self._lock:
            if self._entries.get(digest) is entry:
                del self._entries[digest]
        return None

    def ticket(self) -> tuple[int, float]:
        """Taken before a lookup, handed to ``put``: when the read began, and whether a
        key was forgotten since."""
        return self._generation, time.monotonic()

    def put(self, digest: bytes, principal: Principal, ticket: tuple[int, float]) -> None:
        with self._lock:
            # A key forgotten while this lookup ran may be this one, read before its
            # revocation committed.
            if ticket[0] != self._generation:
                return
            self._entries.pop(digest, None)
            self._entries[digest] = (ticket[1], principal)
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._generation += 1
            for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]


CACHE = KeyCache()


async def authenticate(credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """On the event loop; only a key that must be looked up in the database goes to a
    thread (authentication off, the bootstrap key and a cached key cost no hand-off)."""
    settings = get_settings()
    if settings.auth == "off":
        return ANONYMOUS
    key = credentials.credentials.strip() if credentials is not None else ""
    if not key:
        raise Unauthorized("send an API key: 'Authorization: Bearer KEY'")
    bootstrap = settings.bootstrap_key
    if bootstrap is not None and hmac.compare_digest(
        key.encode(), bootstrap.get_secret_value().encode()
    ):
        return BOOTSTRAP
    ttl = settings.auth_cache_seconds
    digest = hashlib.sha256(key.encode()).digest()
    principal = CACHE.get(digest, ttl) if ttl > 0 else None
    if principal is not None:
        return principal
    watch_revocations()
    ticket = CACHE.ticket()
    principal = await run_in_threadpool(_look_up, key)
    if principal is None:
        raise Unauthorized("the API key is not valid, or it was revoked")
    if ttl > 0:
        CACHE.put(digest, principal, ticket)
    return principal


def _look_up(key: str) -> Principal | None:
    with read_scope() as s:
        return keys.authenticate(s, key)


def watch_revocations() -> None:
    """From the first lookup on, a key row changed or deleted by this process leaves the
    cache when its transaction commits (registered then, not at import)."""
    for name in ("after_update", "after_delete"):
        if not event.contains(ApiKey, name, _changed):
            event.listen(ApiKey, name, _changed)


def _changed(_mapper: Any, _connection: Any, row: ApiKey) -> None:
    key_id, session = row.id, object_session(row)
    if session is None:
        CACHE.forget(key_id)
        return
    # At the commit, not the flush: a lookup until then still reads the key as it was.
    event.listen(session, "after_commit", lambda _s: CACHE.forget(key_id), once=True)


def require(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, once its key is checked for every one of ``scopes``."""

    async def check(credentials: Credentials) -> Principal:
        principal = await authenticate(credentials)
        for scope in scopes:
            if not principal.allows(scope):
                raise Forbidden(f"the key '{principal.name}' lacks the scope {scope}")
        return principal

    return check


def visible(job: JobOut, principal: Principal) -> JobOut:
    """A key sees its own jobs; admin sees all. Others' jobs do not exist for it."""
    if principal.is_admin or job.submitted_by == principal.key_id:
        return job
    raise NotFound(f"no job '{job.id}'", field="job_id")


JobsSubmit = Annotated[Principal, Depends(require("jobs:submit"))]
JobsRead = Annotated[Principal, Depends(require("jobs:read"))]
TrainSubmit = Annotated[Principal, Depends(require("jobs:submit", "models:write"))]
PredictSubmit = Annotated[Principal, Depends(require("jobs:submit", "models:read"))]
