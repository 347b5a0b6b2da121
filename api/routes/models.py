"""The model registry: models, their versions, and what can be trained."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from api.auth import require
from api.deps import SessionDep
from shared.config import get_settings
from shared.datasets import BUILTIN_DATASETS
from shared.db import family_catalogue, fleet, model_registry
from shared.schemas import (
    MAX_OFFSET,
    BatchingIn,
    ErrorOut,
    FamilyOut,
    ModelOut,
    ModelPage,
    ModelVersionOut,
    ModelVersionRef,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 422)
}
router = APIRouter(
    prefix="/v1",
    tags=["models"],
    dependencies=[Depends(require("models:read"))],
    responses=ERRORS,
)


@router.get("/models")
def list_models(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ModelPage:
    return model_registry.list_models(session, limit=limit, offset=offset)


@router.get("/models/{name}")
def get_model(name: str, session: SessionDep) -> ModelOut:
    """A model with all its versions, and its aliases."""
    return model_registry.get_model(session, name)


@router.patch("/models/{name}", dependencies=[Depends(require("models:write"))])
def set_batching(
    name: str, batching: BatchingIn, session: SessionDep, request: Request
) -> ModelOut:
    """Set the model's own batching of sync predictions (``max_batch_size`` rows,
    ``max_wait_ms``); null returns a setting to the global default. Applies from the
    next batch."""
    model = model_registry.set_batching(session, name, batching)
    request.app.state.batcher.forget_limits(name)
    return model


@router.get("/models/{name}/versions/{version}")
def get_model_version(
    name: str,
    version: Annotated[ModelVersionRef, Path(description="a number, latest, or an alias")],
    session: SessionDep,
) -> ModelVersionOut:
    return model_registry.get_model_version(session, name, version)


@router.get("/families")
def list_families(session: SessionDep) -> dict[str, FamilyOut]:
    """The model families a training job may name: the built-ins and every plugin's that
    a worker reported, each with its parameters' JSON Schema and defaults, its input kind
    and tasks, the package that registered it, and the pools whose online workers offer
    it (for train and predict jobs)."""
    workers = fleet.list_workers(session, get_settings().worker_offline_after_seconds)
    return family_catalogue.catalogue(session, workers)


@router.get("/builtin-datasets")
def list_builtin_datasets() -> dict[str, Any]:
    """The built-in data sets."""
    return {
        name: {"input": d.input_kind, "task": d.task, "description": d.description}
        | ({"classes": list(d.classes)} if d.classes else {})
        for name, d in sorted(BUILTIN_DATASETS.items())
    }
