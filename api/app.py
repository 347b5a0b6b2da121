"""The API's app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import errors
from api.batcher import Batcher
from api.limits import BodyLimit
from api.metrics import RequestMetrics
from api.routes import (
    aliases,
    datasets,
    health,
    jobs,
    metrics,
    models,
    outputs,
    pools,
    predict,
    sweeps,
    webhooks,
    workers,
)
from shared import logs, processes
from shared.config import get_settings

log = logging.getLogger("torchqueue.api")
# Where the documentation pages' scripts and styles are served.
DOCS_ASSETS = "/docs-assets"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if get_settings().auth == "off":
        log.warning(
            "TORCHQUEUE_AUTH=off: the API accepts every request without a key; "
            "for local experiments only"
        )
    app.state.batcher = Batcher()
    processes.freeze_heap()
    yield
    await app.state.batcher.close()


def create_logged_app() -> FastAPI:
    """``create_app`` in one of several API processes, which logs as the first does."""
    logs.configure("api")
    return create_app()


def create_app() -> FastAPI:
    # /docs and /redoc load Swagger UI and ReDoc from files installed with the API
    # (fastapi-offline), not from a CDN: they work on a machine without internet.
    app = FastAPIOffline(
        title="torchqueue",
        version="0.1.0",
        description="Run PyTorch training and prediction jobs on a fleet of GPU workers. "
        "Every /v1 route takes an API key: `Authorization: Bearer KEY` (Authorize, above).",
        lifespan=_lifespan,
        static_url=DOCS_ASSETS,
    )
    errors.install(app)
    app.add_middleware(BodyLimit)
    # Outermost: it sees every answer, a refused body's 413 included.
    app.add_middleware(RequestMetrics)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(outputs.router)
    app.include_router(models.router)
    app.include_router(aliases.router)
    app.include_router(predict.router)
    app.include_router(sweeps.router)
    app.include_router(pools.router)
    app.include_router(metrics.router)
    app.include_router(webhooks.router)
    app.include_router(workers.router)
    return app
