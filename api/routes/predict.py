"""Sync predictions: ``POST /v1/models/{name}/predict`` answers with the outputs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import PredictSubmit
from api.batcher import Batcher, Outcome
from api.metrics import metrics, model_label, served
from shared.config import get_settings
from shared.db import jobs, model_registry
from shared.db.session import session_scope
from shared.errors import InvalidSpec
from shared.jobstate import JobState, now
from shared.routing import predict_queue
from shared.schemas import (
    NAME_PATTERN,
    ErrorOut,
    JobOut,
    ModelVersionRef,
    PredictionOut,
    ServeItem,
    ServeRequest,
    input_rows,
)
from shared.validation import check_inputs

router = APIRouter(prefix="/v1", tags=["predict"])
VersionQuery = Annotated[
    ModelVersionRef,
    Query(description="a version number, latest, or an alias (resolved when it is served)"),
]
JSON = "application/json"


@router.post(
    "/models/{name}/predict",
    response_model=PredictionOut,
    responses={
        202: {"model": JobOut, "description": "not done within `timeout`: the job, to poll"},
        **{code: {"model": ErrorOut} for code in (401, 403, 404, 413, 422, 502, 503)},
    },
)
async def predict(
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    req: ServeRequest,
    request: Request,
    who: PredictSubmit,
    version: VersionQuery = "latest",
) -> Response:
    """Run a model on ``inputs`` and answer with its outputs, batched with other callers
    of the same model version. Not done within ``timeout`` seconds: 202 with the job
    (``GET /v1/jobs/{id}`` gives the outputs when it ends). Every prediction is recorded
    as a job with the same id."""
    settings = get_settings()
    timeout = req.timeout if req.timeout is not None else settings.predict_timeout_seconds
    if timeout > settings.max_wait_seconds:
        limit = settings.max_wait_seconds
        raise InvalidSpec(f"timeout is at most {limit} seconds", field="timeout")
    # Built, not validated again: ``req`` holds the item's fields, of the item's own types.
    item = ServeItem.model_construct(
        id=str(uuid.uuid4()), inputs=req.inputs, outputs=req.outputs, by=who.key_id, at=now()
    )
    batcher: Batcher = request.app.state.batcher
    started = time.perf_counter()
    future = await batcher.submit(name, version, req.pool, item, input_rows(req.inputs))
    # A timer on the future itself: cheaper than wait_for, which wraps it twice.
    late = Outcome(202, message=f"not done within {timeout:g} s; GET /v1/jobs/{item.id}")
    timer = asyncio.get_running_loop().call_later(timeout, _give_up, future, late)
    try:
        outcome = await future
    finally:
        timer.cancel()
        batcher.abandon(item, future)  # answered: a no-op; else its answer is not needed
    if outcome.status == 200:
        served(name)
    took = time.perf_counter() - started
    metrics().predict_seconds.labels(model_label(name), str(outcome.status)).observe(took)
    if outcome.status != 202:
        return Response(outcome.body, status_code=outcome.status, media_type=JSON)
    job = await run_in_threadpool(_record_waiting, name, version, req.pool, item, outcome.message)
    if job.state is JobState.succeeded and job.result is not None:  # it ended meanwhile
        # The worker's answer, as it would have been sent: its record is that answer
        # less the job id (a regression's tensor outputs are one-dimensional, which the
        # request-side Tensor model would refuse).
        body = json.dumps({"job_id": job.id, **job.result}).encode()
        return Response(body, media_type=JSON)
    return Response(job.model_dump_json(), status_code=202, media_type=JSON)


def _give_up(future: asyncio.Future[Outcome], late: Outcome) -> None:
    if not future.done():
        future.set_result(late)


def _record_waiting(name: str, version: int | str, pool: str, item: ServeItem, why: str) -> JobOut:
    """The job of a request that is not answered now: recorded as queued, so that the
    caller can poll it (its worker finishes it when it runs, or the reaper sends it again
    as a job). Inputs the version cannot take are refused here as the worker would
    refuse them."""
    with session_scope() as s:
        target = model_registry.get_model_version(s, name, version)
        check_inputs(item.inputs, target.input_schema)
        record = jobs.served_record(
            item, JobState.queued, model=name, version=target.version,
            queue=predict_queue(pool), stamp=now(), message=why,
        )  # fmt: skip
        return jobs.record_waiting(s, record)
