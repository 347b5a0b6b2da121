"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import redis
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from shared.config import get_settings
from shared.db.session import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str | None]:
    """The process is up; ``instance``: the id that `torchqueue up` gave it, if any."""
    return {"status": "ok", "instance": get_settings().instance}


def _check_database() -> str:
    try:
        with get_engine().connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _check_redis() -> str:
    try:
        client = redis.Redis.from_url(
            get_settings().broker_url, socket_timeout=2, socket_connect_timeout=2
        )
        client.ping()
        client.close()
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


@router.get("/readyz", responses={503: {"description": "the database or Redis is unreachable"}})
async def readyz() -> JSONResponse:
    """The database and Redis answer; 503 says which does not."""
    checks: dict[str, Any] = {
        "database": await run_in_threadpool(_check_database),
        "redis": await run_in_threadpool(_check_redis),
    }
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        body = {"type": "unavailable", "detail": f"{' and '.join(down)} unreachable", **checks}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", **checks})
