"""The table of workers: every worker, what it serves and runs, and whether it is online."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.auth import require
from api.deps import SessionDep
from shared.config import get_settings
from shared.db import fleet
from shared.schemas import ErrorOut, WorkerOut

router = APIRouter(
    prefix="/v1",
    tags=["workers"],
    dependencies=[Depends(require("jobs:read"))],
    responses={code: {"model": ErrorOut} for code in (401, 403)},
)


@router.get("/workers")
def list_workers(session: SessionDep) -> list[WorkerOut]:
    """Name, host, pool, queues, devices, versions, last seen, state and current job."""
    settings = get_settings()
    workers: list[WorkerOut] = fleet.list_workers(
        session, settings.worker_offline_after_seconds, settings.lease_seconds
    )
    return workers
