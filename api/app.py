"""The API's app factory."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routes import health, jobs, models


def create_app() -> FastAPI:
    app = FastAPI(
        title="torchqueue",
        version="0.1.0",
        description="Run PyTorch training and prediction jobs on a fleet of GPU workers.",
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    return app
