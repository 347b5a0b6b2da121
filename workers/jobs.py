"""What a worker does with a job id: claim it, hold its lease, run it, record the outcome.
Plain functions that tests call without Celery; the Celery tasks are one line around them.

A job ends in one of four ways here: it succeeds; it fails for its own reasons (bad data,
a diverging loss, out of memory), at once and with the reason; it is cancelled (the loop
stops within a batch, the checkpoint stays); or its worker shuts down or meets a transient
error, and it goes back to the queue without being charged an attempt. A worker that dies
outright stops renewing the lease, and the reaper takes the job back.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import redis
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session

from shared import logs, notify
from shared.artifacts import open_store
from shared.config import get_settings
from shared.db import job_reads, jobs, model_registry
from shared.db.session import UNREACHABLE, session_scope
from shared.enqueue import send_job
from shared.errors import InvalidSpec, JobCrashed, JobError, OutOfMemory, SpecRefused, Unavailable
from shared.jobstate import TERMINAL, JobState
from shared.schemas import JobOut, PredictSpec, Tensor, TrainSpec, input_rows
from workers import metrics

log = logging.getLogger(__name__)

# Set when this process is asked to stop (SIGTERM) while it trains: the job stops within
# a batch and goes back to the queue, and the worker's warm shutdown then waits for that
# rather than for the whole training.
SHUTDOWN = threading.Event()
_TRAINING = threading.Event()


def _on_sigterm(signum: int, _frame: object) -> None:
    if _TRAINING.is_set():
        SHUTDOWN.set()
        return
    signal.signal(signum, signal.SIG_DFL)  # idle: stop as the default would
    os.kill(os.getpid(), signum)


def guard_sigterm() -> None:
    """Install the SIGTERM handler. Called from the training task, in the prefork child's
    main thread: the pool installs its own handlers after the child's initializer runs."""
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)


TRANSIENT: tuple[type[Exception], ...] = (
    *UNREACHABLE,
    BrokerError,
    redis.ConnectionError,
    Unavailable,
)
# How long a worker keeps trying to record a finished job's outcome while the database is
# unreachable. The work is done and the lease thread keeps renewing the job's lease, so
# waiting is cheaper than giving the job back and running it again.
OUTCOME_PATIENCE_SECONDS = 3600.0


class Lease:
    """Renews a job's lease from a thread, independent of the training loop, and hears
    whether the job is being cancelled or was taken away."""

    def __init__(self, job_id: str, worker: str, interval: float) -> None:
        self.job_id, self.worker, self.interval = job_id, worker, interval
        self.cancel = threading.Event()
        self.lost = threading.Event()
        # Why the job was stopped, when its own worker stopped it (a sweep's pruner).
        self.stopped_because: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                with session_scope() as s:
                    state = jobs.renew_lease(s, self.job_id, self.worker)
            except UNREACHABLE as exc:
                log.warning("could not renew the lease of job %s: %s", self.job_id, exc)
                continue
            if state is None:
                if not self._ended():
                    log.warning(
                        "job %s is no longer ours (%s): stopping it", self.job_id, self.worker
                    )
                    self.lost.set()
                return
            if state is JobState.cancelling:
                self.cancel.set()

    def _ended(self) -> bool:
        """Whether the job ended as this worker's (its outcome was just recorded): then
        there is nothing left to renew, and nothing to warn about."""
        try:
            with session_scope() as s:
                return _ended_as(s, self.job_id, self.worker, TERMINAL)
        except UNREACHABLE:
            return False

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set() or SHUTDOWN.is_set()


def _claim(job_id: str, worker: str) -> JobOut | None:
    try:
        with session_scope() as s:
            job = jobs.claim_job(s, job_id, worker, get_settings().lease_seconds)
    except UNREACHABLE as exc:  # not the job's fault: its task retries it later
        raise Unavailable(f"the database cannot be reached: {_first_line(exc)}") from exc
    if job is None:
        log.info("job %s is not queued (duplicate or late message): nothing to do", job_id)
    else:
        log.info("job %s claimed by %s (attempt %d)", job_id, worker, job.attempts)
    return job


def error_of(exc: BaseException) -> JobError:
    """Why a job failed, as a kind of the error tree: its own, or the one ``exc`` is."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, InvalidSpec):  # the family's own checks, on the worker
        return SpecRefused(exc.detail, field=exc.field)
    if _out_of_memory(exc):
        return OutOfMemory(f"{exc}; use a smaller batch or model")
    return JobCrashed(f"{type(exc).__name__}: {exc}")


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):  # torch's devices'; Python's
        return True
    # Two failures to allocate have no class of their own, only words: the CPU allocator's
    # ("DefaultCPUAllocator: can't allocate memory"), and a CUDA call that fails with
    # cudaErrorMemoryAllocation ("CUDA error: out of memory", a torch.AcceleratorError).
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


def _record(job_id: str, lease: Lease, write: Callable[[Session], bool]) -> bool:
    """Record a job's outcome: ``write`` runs in one transaction and says whether the job
    ended as this worker's. While the database cannot be reached, try again with backoff
    for as long as the job is still ours (its lease thread keeps renewing it): a blink of
    the database must not throw finished work away. False when the job was taken away,
    or the database stayed away past OUTCOME_PATIENCE_SECONDS (the lease then expires
    and the reaper takes the job back)."""
    pause, deadline = 0.2, time.monotonic() + OUTCOME_PATIENCE_SECONDS
    while True:
        try:
            with session_scope() as s:
                return write(s)
        except UNREACHABLE as exc:
            if lease.lost.is_set():
                return False
            if time.monotonic() + pause > deadline:
                log.error("gave up recording the outcome of job %s: %s", job_id, _first_line(exc))
                return False
            log.warning(
                "could not record the outcome of job %s (%s); trying again in %.1f s",
                job_id,
                _first_line(exc),
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _ended_as(session: Session, job_id: str, worker: str, states: Collection[JobState]) -> bool:
    """Whether the job has ended in one of ``states`` as this worker's: its outcome just
    recorded, or an earlier try whose commit reached the database although its answer
    never came back."""
    job = job_reads.get_job(session, job_id)
    return job.state in states and job.worker == worker


# The kind of job this process runs now (one at a time: a prefork child, or the solo
# pool's one thread): what its metrics count an ending under.
_running_kind = "train"


def _finish(job_id: str, worker: str, lease: Lease, state: JobState, **outcome: Any) -> bool:
    """End a job as ``state`` with ``outcome`` (``jobs.finish_job``'s values), through
    ``_record``; tell whoever waits for it."""

    def write(s: Session) -> bool:
        return jobs.finish_job(s, job_id, state, worker=worker, **outcome) or _ended_as(
            s, job_id, worker, (state,)
        )

    done = _record(job_id, lease, write)
    if done:
        notify.job_done(job_id)
        metrics.job_ended(_running_kind, state.value)
    return done


def _fail(job_id: str, worker: str, lease: Lease, exc: BaseException) -> None:
    error = error_of(exc)
    if isinstance(error, JobCrashed):
        log.exception("job %s failed unexpectedly", job_id)
    else:
        log.warning("job %s failed: %s", job_id, error.detail)
    _finish(job_id, worker, lease, JobState.failed, error=error.to_dict(), message=error.detail)


def _give_back(job: JobOut, worker: str, reason: str) -> None:
    """Requeue a job this worker cannot finish through no fault of the job's, and send it
    again; if even that fails, the lease expires and the reaper takes it back."""
    try:
        with session_scope() as s:
            moved = jobs.requeue(s, job.id, reason=reason, worker=worker, charge_attempt=False)
        if moved:
            send_job(job, first=True)
            log.info("job %s requeued: %s", job.id, reason)
    except TRANSIENT as exc:
        log.warning("could not requeue job %s (%s); its lease will expire", job.id, exc)


def _progress_writer(job_id: str, worker: str, epochs: int) -> Callable[[dict[str, Any]], None]:
    """Write epoch records to the job, at most once per interval, and always the last."""
    interval = get_settings().progress_interval_seconds
    last = 0.0

    def write(record: dict[str, Any]) -> None:
        nonlocal last
        if time.monotonic() - last < interval and record["epoch"] < epochs:
            return
        last = time.monotonic()
        progress = {
            "epoch": record["epoch"],
            "epochs": epochs,
            "fraction": record["epoch"] / epochs,
            "metrics": record,
        }
        try:
            with session_scope() as s:
                jobs.set_progress(s, job_id, worker, progress)
        except UNREACHABLE as exc:  # progress is best effort; the outcome is not
            log.warning("could not write the progress of job %s: %s", job_id, exc)
        _tell_flower(progress)

    return write


def _tell_flower(progress: dict[str, Any]) -> None:
    """A ``task-progress`` event: Flower shows the task in state PROGRESS while it trains,
    with the progress line in its result column (the one free-text field Flower keeps
    for a task; the task's real result replaces it when it ends)."""
    from celery import current_task

    task = current_task
    if not task or not getattr(task.request, "id", None):  # a proxy: None is falsy
        return  # called without Celery (tests, benchmarks)
    shown = " ".join(
        f"{k}={v:.4g}"
        for k, v in progress["metrics"].items()
        if k.startswith(("train_", "val_")) and isinstance(v, int | float)
    )
    try:
        task.send_event(
            "task-progress", result=f"epoch {progress['epoch']}/{progress['epochs']} {shown}"
        )
    except Exception as exc:  # events are a view; never fail a job for one
        log.debug("could not send a progress event: %s", exc)


def _resumed(job_id: str, worker: str) -> Callable[[int], None]:
    def note(epoch: int) -> None:
        with session_scope() as s:
            jobs.note_resumed(s, job_id, worker, epoch)

    return note


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@logs.with_job_id
def run_train_job(job_id: str, worker: str) -> None:
    global _running_kind
    _running_kind = "train"
    job = _claim(job_id, worker)
    if job is None:
        return
    from workers.checkpoint import JOB_SHARE, Checkpointer, checkpoint_key
    from workers.training import Interrupted

    spec = TrainSpec.model_validate(job.spec)
    # Without an interval of the job's own, checkpoints take at most JOB_SHARE of its time.
    checkpoints = Checkpointer(
        open_store(),
        checkpoint_key(job.id),
        spec.training.checkpoint_every_seconds,
        max_share=JOB_SHARE,
    )
    _TRAINING.set()
    with Lease(job.id, worker, get_settings().heartbeat_seconds) as lease:
        try:
            if _train(job, spec, worker, lease, checkpoints):
                checkpoints.delete()
        except Interrupted as exc:
            _interrupted(job, worker, lease, exc.epoch, checkpoints.saved_epoch)
        except TRANSIENT as exc:
            _give_back(job, worker, f"transient error on {worker}: {exc}; requeued")
        except Exception as exc:  # every failure ends on the job, never as a silent hang
            _fail(job.id, worker, lease, exc)
            checkpoints.delete()
        finally:
            _TRAINING.clear()
            SHUTDOWN.clear()  # honoured: this job went back to the queue
            _free_memory()
    if spec.trial is not None:
        _next_trials(spec.trial.sweep_id)


def _next_trials(sweep_id: str) -> None:
    """A trial's job ended (or went back to the queue): let its sweep go on at once. Best
    effort: the reaper advances every running sweep on each pass as well."""
    from shared import sweep_driver

    try:
        sweep_driver.advance(sweep_id)
    except Exception as exc:
        log.warning("could not advance sweep %s: %r; the reaper will", sweep_id, exc)


def _epoch_hook(
    job: JobOut, spec: TrainSpec, worker: str, lease: Lease
) -> Callable[[dict[str, Any]], None]:
    """Progress after each epoch; for a sweep's trial, its metric too, and the pruner's
    verdict: a pruned trial stops within a batch, its job cancelled, its worker free."""
    written = _progress_writer(job.id, worker, spec.training.epochs)

    def progress(record: dict[str, Any]) -> None:
        written(record)
        metrics.epoch_ended(float(record.get("seconds", 0.0)))

    trial = spec.trial
    if trial is None:
        return progress

    from shared.sweep_driver import TrialPruner

    pruner = TrialPruner(trial.sweep_id, trial.number)

    def each(record: dict[str, Any]) -> None:
        progress(record)
        try:
            last = record["epoch"] >= spec.training.epochs  # nothing left to save by stopping
            pruned = pruner.report(record, last)
        except UNREACHABLE as exc:  # the pruner's advice is best effort; training goes on
            log.warning("could not report trial %d's epoch: %s", trial.number, exc)
            return
        if pruned:
            with session_scope() as s:
                jobs.request_cancel(s, job.id, by=f"sweep:{trial.sweep_id}")
            lease.stopped_because = f"pruned after epoch {record['epoch']} by its sweep"
            lease.cancel.set()

    return each


def _interrupted(job: JobOut, worker: str, lease: Lease, epoch: int, saved: int) -> None:
    if lease.lost.is_set():
        return  # the job is someone else's now
    kept = f"; the checkpoint of epoch {saved} is kept" if saved else ""
    if lease.cancel.is_set():
        message = lease.stopped_because or f"cancelled during epoch {epoch}{kept}"
        _finish(job.id, worker, lease, JobState.cancelled, message=message)
        return
    _give_back(job, worker, f"{worker} shut down during epoch {epoch}; requeued{kept}")


def _train(job: JobOut, spec: TrainSpec, worker: str, lease: Lease, checkpoints: Any) -> bool:
    """Train, save, register, succeed; False when the job was taken away meanwhile."""
    from workers import modelio, training
    from workers.devices import torch_device
    from workers.usage import Meter

    hooks = training.Hooks(
        on_epoch=_epoch_hook(job, spec, worker, lease),
        on_resume=_resumed(job.id, worker),
        should_stop=lease.should_stop,
        checkpointer=checkpoints,
        record_extra={"attempt": job.attempts},
    )
    device = torch_device()
    meter = Meter(device)
    world = spec.resources.devices
    if world > 1:
        from workers.distributed import train_parallel

        trained = train_parallel(spec, job.id, hooks, world, cuda=device.type == "cuda")
    else:
        trained = training.train(spec, device=device, hooks=hooks)
    saved = modelio.save(trained, open_store(), f"models/{spec.model_name}/{job.id}")
    result: dict[str, Any] = {
        "metrics": trained.metrics,
        "history": trained.history,
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "stopped_early": trained.stopped_early,
        "ranks": world,
        "artifact_uri": saved.uri,
        "sha256": saved.sha256,
    }
    usage = meter.finish(trained.samples)
    if lease.lost.is_set():
        return False

    def register(s: Session) -> bool:
        """The version and the job's success in one transaction: both or neither."""
        version = model_registry.register_model_version(
            s,
            model_name=spec.model_name,
            family=spec.family,
            params=spec.params,
            # The registry's copy also names a stored table's input columns; the
            # manifest's stays the builder's own, which loading checks.
            input_schema=trained.input_schema
            | ({"columns": trained.columns} if trained.columns else {}),
            metrics=trained.metrics,
            artifact_uri=saved.uri,
            sha256=saved.sha256,
            job_id=job.id,
            usage=usage,
            dataset=spec.dataset.lineage(),
        )
        result["model_version"] = version.version
        if jobs.finish_job(
            s,
            job.id,
            JobState.succeeded,
            worker=worker,
            result=result,
            usage=usage,
            model_version=version.version,
            message=f"made {spec.model_name} v{version.version}",
        ):
            return True
        s.rollback()  # taken away meanwhile, or registered by an earlier try: not again
        return _ended_as(s, job.id, worker, (JobState.succeeded,))

    if not _record(job.id, lease, register):
        return False
    notify.job_done(job.id)
    metrics.job_ended("train", JobState.succeeded.value)
    metrics.trained(trained.samples)
    log.info("job %s of %s succeeded", job.id, spec.model_name)
    return True


@logs.with_job_id
def run_predict_job(job_id: str, worker: str) -> None:
    global _running_kind
    _running_kind = "predict"
    job = _claim(job_id, worker)
    if job is None:
        return
    # A large prediction may outlast the lease: it is renewed as for a training job.
    with Lease(job.id, worker, get_settings().heartbeat_seconds) as lease:
        try:
            _predict(job, worker, lease)
        except TRANSIENT as exc:
            _give_back(job, worker, f"transient error on {worker}: {exc}; requeued")
        except Exception as exc:
            _fail(job.id, worker, lease, exc)


def _predict(job: JobOut, worker: str, lease: Lease) -> None:
    from workers import inference
    from workers.devices import torch_device
    from workers.usage import Meter

    meter = Meter(torch_device())
    spec = PredictSpec.model_validate(job.spec)
    with session_scope() as s:
        version = model_registry.get_model_version(s, spec.model_name, spec.version)
    if spec.dataset is not None:
        from workers import batch_predict

        ending = batch_predict.run(job, spec, version, worker, lease)
        if ending is not None and _finish(job.id, worker, lease, ending.state, **ending.outcome):
            ending.then()
        return
    assert spec.inputs is not None  # a PredictSpec has inputs or a data set
    inputs = spec.inputs.model_dump() if isinstance(spec.inputs, Tensor) else spec.inputs
    outputs = inference.predict(version, inputs, spec.outputs)
    result = {"model_name": spec.model_name, "model_version": spec.version, "outputs": outputs}
    if spec.outputs == "tensor":
        result["classes"] = inference.get_model(version).classes
    rows = input_rows(spec.inputs)
    usage = meter.finish(rows)
    _finish(job.id, worker, lease, JobState.succeeded, result=result, message=f"{rows} outputs",
            usage=usage)  # fmt: skip
