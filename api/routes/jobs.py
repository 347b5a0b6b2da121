"""Jobs: submit training and prediction, read, list, cancel, and a job's history."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import JobsRead, JobsSubmit, PredictSubmit, TrainSubmit, visible
from api.deps import SessionDep
from api.inline import store_inline
from api.submitter import Made, submitter
from shared.auth import Principal
from shared.config import get_settings
from shared.db import (
    datasets,
    family_catalogue,
    fleet,
    job_reads,
    jobs,
    model_registry,
    webhooks,
)
from shared.db.session import read_scope, session_scope
from shared.enqueue import send_job
from shared.errors import Conflict, Forbidden, InvalidSpec, Unavailable
from shared.families import FAMILIES, AnyFamily
from shared.jobstate import JobKind, JobState
from shared.notify import wait_until_done
from shared.routing import predict_queue, train_queue, waiting_reason
from shared.schemas import (
    MAX_OFFSET,
    NAME_PATTERN,
    DatasetVersionOut,
    ErrorOut,
    JobEventOut,
    JobOut,
    JobPage,
    PredictRequest,
    PredictSpec,
    RunPredictDataset,
    TrainRequest,
    TrainSpec,
)
from shared.validation import check_inputs, resolve_train, unknown_family
from shared.webhook_urls import check_webhook_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
    422: {"model": ErrorOut},
    503: {"model": ErrorOut},
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="the same key with the same body returns the job it made (200)",
    ),
]


def _request_hash(kind: JobKind, body: dict[str, Any]) -> str:
    canonical = json.dumps([kind.value, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing(session: Session, key: str, request_hash: str) -> JobOut | None:
    found = job_reads.find_idempotent(session, key)
    if found is None:
        return None
    job, made_with = found
    if made_with != request_hash:
        raise Conflict(
            f"this Idempotency-Key was used for a different request (job {job.id})",
            field="Idempotency-Key",
        )
    return job


def _own(who: Principal, key: str) -> str:
    """An Idempotency-Key as the caller's own, of a fixed length whatever it sent."""
    return hashlib.sha256(f"{who.key_id}:{key}".encode()).hexdigest()


def _submit(
    session: Session,
    who: Principal,
    key: str | None,
    request_hash: str,
    family: str,
    callback_url: str | None = None,
    **create: Any,
) -> tuple[JobOut, bool]:
    """Record a job (or find the one this key made) and send it; return it and whether
    it is new. The row is committed before its message is sent. Idempotency keys are
    each API key's own: two callers cannot collide. A ``callback_url`` becomes a webhook
    to the job's end alone, made in the same transaction."""
    if callback_url is not None:
        callback_url = _checked_callback(callback_url)
    if key is not None:
        key = _own(who, key)
    create["submitted_by"] = who.key_id
    served = fleet.served_queues(session, get_settings().worker_offline_after_seconds)
    if (why := waiting_reason(create["queue"], served, family)) is not None:
        create["message"] = why
    if key is not None and (job := _existing(session, key, request_hash)) is not None:
        return job, False
    try:
        job = jobs.create_job(
            session, idempotency_key=key, request_hash=request_hash if key else None, **create
        )
        if callback_url is not None:
            hook, secret = webhooks.create(
                session, url=callback_url, events=list(JOB_ENDS), owner=who.key_id,
                owner_is_admin=False, job_id=job.id,
            )  # fmt: skip
            job = job.model_copy(update={"callback": {"webhook_id": hook.id, "secret": secret}})
        session.commit()
    except IntegrityError:  # the same key, submitted at the same moment
        session.rollback()
        if key is None or (job := _existing(session, key, request_hash)) is None:
            raise
        return job, False
    try:
        send_job(job)
    except Unavailable as exc:
        # The job is recorded; the reaper sends it once the broker answers again.
        message = f"waiting to be sent: {exc.detail}"
        jobs.set_message(session, job.id, message)
        session.commit()
        job = job.model_copy(update={"message": message})
    return job, True


# The events a job's callback hears: its end, whichever it is.
JOB_ENDS = ("job.succeeded", "job.failed", "job.cancelled")


def _checked_callback(url: str) -> str:
    try:
        return check_webhook_url(url)
    except InvalidSpec as exc:
        raise InvalidSpec(exc.detail, field="callback_url") from None


def training_lookups(
    session: Session, who: Principal, req: TrainRequest
) -> tuple[AnyFamily, DatasetVersionOut | None, DatasetVersionOut | None]:
    """What a training request names, looked up for its validation: its family, and the
    stored data set versions it trains and validates on (404s naming the field)."""
    found = validation = None
    if (data := req.dataset).name is not None:
        if not who.allows("datasets:read"):
            raise Forbidden(f"the key '{who.name}' lacks the scope datasets:read")
        found = datasets.get_version(
            session, data.name, data.version, who.viewer, prefix="dataset."
        )
        if data.validation is not None:
            v = data.validation
            validation = datasets.get_version(
                session, v.name, v.version, who.viewer, prefix="dataset.validation."
            )
    family = family_catalogue.lookup(session, req.family)
    if family is None:
        unknown_family(req.family, family_catalogue.names(session))
    return family, found, validation


@router.post("/train", status_code=201, responses={**ERRORS, 200: {"model": JobOut}})
async def submit_train(
    req: TrainRequest,
    response: Response,
    who: TrainSubmit,
    key: IdempotencyKey = None,
) -> JobOut:
    """Queue a training job; its model version appears when it succeeds. The same
    ``Idempotency-Key`` with the same body answers 200 with the job it made."""
    data = req.dataset
    if key is None and req.callback_url is None and data.name is None and req.family in FAMILIES:
        # Nothing to look up: validated here, recorded with its neighbours' (a group commit).
        spec = resolve_train(req, None, None, FAMILIES[req.family])
        create = _train_create(req, spec)

        def make(session: Session) -> Made:
            if data.inline is not None:
                spec.dataset = store_inline(session, who, spec.model_name, data.inline)
            return {**create, "spec": spec.model_dump(mode="json"),
                    "submitted_by": who.key_id}, spec.family  # fmt: skip

        return await submitter().submit(make)
    job, created = await run_in_threadpool(_submit_train, req, who, key)
    response.status_code = 201 if created else 200
    return job


def _train_create(req: TrainRequest, spec: TrainSpec) -> dict[str, Any]:
    """A training job's ``create_job`` keywords, but its spec."""
    return {
        "kind": JobKind.train,
        "model_name": spec.model_name,
        "queue": train_queue(
            req.resources.pool,
            req.resources.devices,
            req.resources.min_device_memory_gb,
            spec.family,
        ),
        "priority": req.priority,
        "max_attempts": req.max_attempts,
    }


def _submit_train(req: TrainRequest, who: Principal, key: str | None) -> tuple[JobOut, bool]:
    """A training job that needs the database before it is made (a stored data set, a
    plugin's family, an Idempotency-Key, a callback), in a transaction of its own."""
    with session_scope() as session:
        family, found, validation = training_lookups(session, who, req)
        spec = resolve_train(req, found, validation, family)
        data = req.dataset
        request_hash = _request_hash(JobKind.train, req.model_dump(mode="json"))
        if key is not None and (job := _existing(session, _own(who, key), request_hash)):
            return job, False
        if data.inline is not None:
            spec.dataset = store_inline(session, who, spec.model_name, data.inline)
        return _submit(
            session,
            who,
            key,
            request_hash,
            spec.family,
            req.callback_url,
            spec=spec.model_dump(mode="json"),
            **_train_create(req, spec),
        )


def _predict_create(s: Session, req: PredictRequest, who: Principal) -> tuple[dict[str, Any], str]:
    """A prediction job's ``create_job`` keywords, once its model version (and data set)
    are looked up and its inputs checked; and the version's family."""
    version = model_registry.get_model_version(s, req.model_name, req.version)
    scored = None
    if req.dataset is not None:
        data = req.dataset
        found = datasets.get_version(s, data.name, data.version, who.viewer, prefix="dataset.")
        scored = RunPredictDataset(
            **data.model_dump(exclude={"version"}),
            version=found.version,
            file=datasets.file_of(found),
        )
    else:
        check_inputs(req.inputs or [], version.input_schema)
    spec = PredictSpec(
        model_name=req.model_name,
        version=version.version,
        inputs=req.inputs,
        dataset=scored,
        outputs=req.outputs,
    )
    create = {
        "kind": JobKind.predict,
        "model_name": req.model_name,
        "spec": spec.model_dump(mode="json"),
        # Scoring a data set is bulk work, which goes to the pool's training workers: a
        # prediction worker runs batches of sync predictions in its one thread, and a
        # long job there would hold up every sync request behind it.
        "queue": train_queue(req.resources.pool, 1, 0, version.family)
        if scored is not None
        else predict_queue(req.resources.pool, version.family),
        "model_version": version.version,
        "priority": req.priority,
        "max_attempts": req.max_attempts,
        "submitted_by": who.key_id,
    }
    return create, version.family


def _create_predict(req: PredictRequest, who: Principal, key: str | None) -> tuple[JobOut, bool]:
    """A prediction with an Idempotency-Key or a callback, in a transaction of its own."""
    with session_scope() as s:
        create, family = _predict_create(s, req, who)
        del create["submitted_by"]  # ``_submit`` sets it
        return _submit(
            s,
            who,
            key,
            _request_hash(JobKind.predict, req.model_dump(mode="json", exclude={"wait"})),
            family,
            req.callback_url,
            **create,
        )


def _read(job_id: str) -> JobOut:
    with read_scope() as s:
        return job_reads.get_job(s, job_id)


@router.post(
    "/predict",
    status_code=201,
    responses={
        **ERRORS,
        200: {"model": JobOut, "description": "finished within `wait`"},
        202: {"model": JobOut, "description": "still running after `wait`; poll it"},
    },
)
async def submit_predict(
    req: PredictRequest, response: Response, who: PredictSubmit, key: IdempotencyKey = None
) -> JobOut:
    """Queue a prediction; with ``wait``, answer when it ends (200) or when the wait runs
    out (202, poll ``GET /v1/jobs/{id}``)."""
    settings = get_settings()
    if req.wait is not None and req.wait > settings.max_wait_seconds:
        raise InvalidSpec(f"wait is at most {settings.max_wait_seconds} seconds", field="wait")
    if key is None and req.callback_url is None:
        # Looked up and recorded with its neighbours, in their transaction (a group commit).
        job, created = await submitter().submit(lambda s: _predict_create(s, req, who)), True
    else:
        job, created = await run_in_threadpool(_create_predict, req, who, key)
    if req.wait is None:
        response.status_code = 201 if created else 200
        return job

    async def done() -> bool:
        nonlocal job
        job = await run_in_threadpool(_read, job.id)
        return job.state.is_terminal()

    ended = await wait_until_done(job.id, done, req.wait)
    response.status_code = 200 if ended else 202
    return job


@router.get("/{job_id}", responses=ERRORS)
def get_job(job_id: str, session: SessionDep, who: JobsRead) -> JobOut:
    return visible(job_reads.get_job(session, job_id), who)


@router.post("/{job_id}/cancel", responses=ERRORS)
def cancel_job(job_id: str, session: SessionDep, who: JobsSubmit) -> JobOut:
    """A queued job is cancelled at once; a running one becomes ``cancelling`` and its
    worker stops it within a batch. Cancelling a finished job is 409."""
    visible(job_reads.get_job(session, job_id), who)
    return jobs.request_cancel(session, job_id, by=who.key_id)


@router.get("/{job_id}/events", responses=ERRORS)
def job_events(job_id: str, session: SessionDep, who: JobsRead) -> list[JobEventOut]:
    """The job's history: queued, claimed, resumed, lease expired, cancelled, finished."""
    visible(job_reads.get_job(session, job_id), who)
    return job_reads.list_events(session, job_id)


@router.get("", responses=ERRORS)
def list_jobs(
    session: SessionDep,
    who: JobsRead,
    state: JobState | None = None,
    kind: JobKind | None = None,
    model_name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    """Newest first; a key lists its own jobs, admin all."""
    return job_reads.list_jobs(
        session,
        state=state,
        kind=kind,
        model_name=model_name,
        submitted_by=None if who.is_admin else who.key_id,
        limit=limit,
        offset=offset,
    )
