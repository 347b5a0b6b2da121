"""A pool's backlog, as an autoscaler reads it (KEDA's metrics-api scaler, in
``ops/k8s``): from the database, the record, not from Redis, whose lists split one queue
by priority and lose their contents with a flush."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.auth import JobsRead
from api.deps import SessionDep
from shared.db import job_reads
from shared.routing import POOL_PATTERN
from shared.schemas import ErrorOut

router = APIRouter(prefix="/v1/pools", tags=["operations"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 403, 422)}


@router.get("/{pool}/backlog", responses=ERRORS)
def backlog(
    pool: Annotated[str, Path(pattern=POOL_PATTERN)], session: SessionDep, who: JobsRead
) -> dict[str, Any]:
    """``{"pool", "queued", "queued_by_kind", "running", "oldest_queued_seconds"}``:
    jobs waiting for the pool's workers (every key's: it sizes the pool, not a caller's
    share), jobs its workers hold, and how long the oldest has waited."""
    return job_reads.pool_backlog(session, pool)
