"""Who may call: every ``/v1`` route takes an API key (``Authorization: Bearer KEY``) with
the scope the route needs. 401 without a valid key, 403 with a key that lacks the scope.

The key is read through FastAPI's ``HTTPBearer``, so that the OpenAPI schema declares it
and ``/docs`` offers its Authorize button; the answers without a key stay ours."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.auth import Principal
from shared.config import get_settings
from shared.db import keys
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


async def authenticate(credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """On the event loop; only a key that must be looked up in the database goes to a
    thread (authentication off and the bootstrap key cost no hand-off)."""
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
    principal = await run_in_threadpool(_look_up, key)
    if principal is None:
        raise Unauthorized("the API key is not valid, or it was revoked")
    return principal


def _look_up(key: str) -> Principal | None:
    with read_scope() as s:
        return keys.authenticate(s, key)


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
