"""What a worker does with a job id: claim it, run it, record the outcome. Plain functions
that tests call without Celery; the Celery tasks are one line around them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.artifacts import open_store
from shared.config import get_settings
from shared.db import store
from shared.db.session import session_scope
from shared.errors import JobError
from shared.jobstate import JobState
from shared.schemas import JobOut, PredictSpec, TrainSpec

log = logging.getLogger(__name__)


def _claim(job_id: str, worker: str) -> JobOut | None:
    with session_scope() as s:
        job = store.claim_job(s, job_id, worker)
    if job is None:
        log.info("job %s is not queued (duplicate or late message): nothing to do", job_id)
    else:
        log.info("job %s claimed by %s (attempt %d)", job_id, worker, job.attempts)
    return job


def _fail(job_id: str, exc: BaseException) -> None:
    if isinstance(exc, JobError):
        error = {"type": exc.type, "message": exc.detail}
        log.warning("job %s failed: %s", job_id, exc.detail)
    else:
        error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        log.exception("job %s failed unexpectedly", job_id)
    with session_scope() as s:
        store.finish_job(s, job_id, JobState.failed, error=error)


def _progress_writer(job_id: str, worker: str, epochs: int) -> Callable[[dict[str, Any]], None]:
    """Write epoch records to the job, at most once per interval, and always the last."""
    interval = get_settings().progress_interval_seconds
    history: list[dict[str, Any]] = []
    last = 0.0

    def write(record: dict[str, Any]) -> None:
        nonlocal last
        history.append(record)
        if time.monotonic() - last < interval and record["epoch"] < epochs:
            return
        last = time.monotonic()
        progress = {
            "epoch": record["epoch"],
            "epochs": epochs,
            "fraction": record["epoch"] / epochs,
            "metrics": record,
        }
        with session_scope() as s:
            store.set_progress(s, job_id, worker, progress)

    return write


def run_train_job(job_id: str, worker: str) -> None:
    job = _claim(job_id, worker)
    if job is None:
        return
    try:
        _train(job, worker)
    except Exception as exc:  # every failure ends on the job, never as a silent hang
        _fail(job_id, exc)


def _train(job: JobOut, worker: str) -> None:
    from workers import modelio, training
    from workers.devices import torch_device

    spec = TrainSpec.model_validate(job.spec)
    trained = training.train(
        spec,
        device=torch_device(),
        on_epoch=_progress_writer(job.id, worker, spec.training.epochs),
    )
    saved = modelio.save(trained, open_store(), f"models/{spec.model_name}/{job.id}")
    result: dict[str, Any] = {
        "metrics": trained.metrics,
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "stopped_early": trained.stopped_early,
        "artifact_uri": saved.uri,
        "sha256": saved.sha256,
    }
    with session_scope() as s:
        version = store.register_model_version(
            s,
            model_name=spec.model_name,
            family=spec.family,
            params=spec.params,
            input_schema=trained.input_schema,
            metrics=trained.metrics,
            artifact_uri=saved.uri,
            sha256=saved.sha256,
            job_id=job.id,
        )
        result["model_version"] = version.version
        store.finish_job(
            s, job.id, JobState.succeeded, result=result, model_version=version.version
        )
    log.info("job %s made %s version %d", job.id, spec.model_name, version.version)


def run_predict_job(job_id: str, worker: str) -> None:
    job = _claim(job_id, worker)
    if job is None:
        return
    try:
        from workers import inference

        spec = PredictSpec.model_validate(job.spec)
        with session_scope() as s:
            version = store.get_model_version(s, spec.model_name, spec.version)
        outputs = inference.predict(version, list(spec.inputs))
        result = {"model_name": spec.model_name, "model_version": spec.version, "outputs": outputs}
        with session_scope() as s:
            store.finish_job(s, job_id, JobState.succeeded, result=result)
    except Exception as exc:
        _fail(job_id, exc)
