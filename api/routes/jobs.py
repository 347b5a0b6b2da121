"""Jobs: submit training and prediction, read one, list many."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import SessionDep
from api.enqueue import queue_for, send
from shared.config import get_settings
from shared.db import store
from shared.db.session import session_scope
from shared.errors import InvalidSpec
from shared.jobstate import JobKind, JobState
from shared.schemas import (
    ErrorOut,
    JobOut,
    JobPage,
    PredictRequest,
    PredictSpec,
    TrainRequest,
    check_inputs,
    resolve_train,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorOut},
    422: {"model": ErrorOut},
    503: {"model": ErrorOut},
}


@router.post("/train", status_code=201, responses=ERRORS)
def submit_train(req: TrainRequest, session: SessionDep) -> JobOut:
    """Queue a training job; its model version appears when it succeeds."""
    spec = resolve_train(req)
    job = store.create_job(
        session,
        kind=JobKind.train,
        model_name=spec.model_name,
        spec=spec.model_dump(mode="json"),
        queue=queue_for(JobKind.train),
    )
    session.commit()  # the row exists before its message does
    send(job)
    return job


def _create_predict(req: PredictRequest) -> JobOut:
    with session_scope() as s:
        version = store.get_model_version(s, req.model_name, req.version)
        check_inputs(req.inputs, version.input_schema)
        spec = PredictSpec(model_name=req.model_name, version=version.version, inputs=req.inputs)
        job = store.create_job(
            s,
            kind=JobKind.predict,
            model_name=req.model_name,
            spec=spec.model_dump(mode="json"),
            queue=queue_for(JobKind.predict),
            model_version=version.version,
        )
    send(job)
    return job


def _read(job_id: str) -> JobOut:
    with session_scope() as s:
        return store.get_job(s, job_id)


@router.post(
    "/predict",
    status_code=201,
    responses={
        **ERRORS,
        200: {"model": JobOut, "description": "finished within `wait`"},
        202: {"model": JobOut, "description": "still running after `wait`; poll it"},
    },
)
async def submit_predict(req: PredictRequest, response: Response) -> JobOut:
    """Queue a prediction; with ``wait``, answer when it ends (200) or when the wait runs
    out (202, poll ``GET /v1/jobs/{id}``)."""
    settings = get_settings()
    if req.wait is not None and req.wait > settings.max_wait_seconds:
        raise InvalidSpec(f"wait is at most {settings.max_wait_seconds} seconds", field="wait")
    job = await run_in_threadpool(_create_predict, req)
    if req.wait is None:
        return job
    deadline = time.monotonic() + req.wait
    while not job.state.is_terminal() and time.monotonic() < deadline:
        await asyncio.sleep(settings.wait_poll_seconds)
        job = await run_in_threadpool(_read, job.id)
    response.status_code = 200 if job.state.is_terminal() else 202
    return job


@router.get("/{job_id}", responses=ERRORS)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    return store.get_job(session, job_id)


@router.get("", responses=ERRORS)
def list_jobs(
    session: SessionDep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    model_name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Newest first."""
    return store.list_jobs(
        session, state=state, kind=kind, model_name=model_name, limit=limit, offset=offset
    )
