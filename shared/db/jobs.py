"""Jobs in the database, and the one writer of them: every birth, every transition and
every other write of a job row goes through this module (a test reads the source of every
other module and holds the rule). Each transition is one conditional UPDATE checked
against the state machine's data in ``shared.jobstate``, so two processes racing for the
same job cannot both win. Functions take a session (``session_scope`` commits) and
return pydantic objects, never ORM rows; reads are ``shared.db.job_reads``.

Births:
- ``create_job``: a submitted job, born ``queued``.
- ``record_waiting``: a sync prediction whose caller stopped waiting, born ``queued``.
- ``record_served``: sync predictions as their worker ran them, born ended, or ending a
  waiting record through the served edge (``jobstate.SERVED_FROM``).
Both take the rows that ``served_record`` makes.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import Conflict, WorkerLost
from shared.jobstate import (
    ALLOWED_FROM,
    BORN_AS,
    HELD,
    SERVED_BORN_AS,
    SERVED_FROM,
    TERMINAL,
    JobEventKind,
    JobKind,
    JobState,
    now,
)
from shared.routing import SERVE_PRIORITY
from shared.schemas import JobOut, PredictSpec, ServeItem

from . import webhooks
from .job_reads import get_job, job_out
from .models import Job, JobEvent

_JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
_EVENTS: sa.Table = JobEvent.__table__  # type: ignore[assignment]
_ENDED_BY = {
    JobState.succeeded: JobEventKind.succeeded,
    JobState.failed: JobEventKind.failed,
    JobState.cancelled: JobEventKind.cancelled,
}


def add_event(
    session: Session, job_id: str, kind: JobEventKind, message: str, worker: str | None = None
) -> None:
    session.add(JobEvent(job_id=job_id, at=now(), kind=kind, message=message, worker=worker))


# --- the one conditional UPDATE --------------------------------------------------------


def transition(
    session: Session,
    job_id: str,
    to: JobState,
    *,
    only_from: frozenset[JobState] | None = None,
    served: bool = False,
    where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """Move a job to ``to`` with one conditional UPDATE; return whether it moved.

    The UPDATE applies only while the job is in a state that allows the transition
    (``jobstate.ALLOWED_FROM``, or ``SERVED_FROM`` for a served record; narrowed further
    by ``only_from``), so a duplicated message, a late cancel or a second worker finds
    nothing to do. ``where`` adds conditions (a lease that expired, a worker that still
    owns the job); ``values`` are other columns written in the same statement.
    """
    allowed = (SERVED_FROM if served else ALLOWED_FROM).get(to, frozenset())
    sources = allowed if only_from is None else allowed & only_from
    if not sources:
        raise ValueError(f"no transition to {to.value} from {sorted(only_from or allowed)}")
    stamp = now()
    values.setdefault("updated_at", stamp)
    if to is JobState.running:
        values.setdefault("started_at", stamp)
    if to.is_terminal():
        values.setdefault("finished_at", stamp)
    stmt = (
        sa.update(Job)
        .where(Job.id == job_id, Job.state.in_(sorted(sources)), *where)
        .values(state=to, **values)
        .execution_options(synchronize_session=False)
    )
    moved = bool(getattr(session.execute(stmt), "rowcount", 0) == 1)
    if moved and to.is_terminal():
        _tell_subscribers(session, job_id, to)
    return moved


def _tell_subscribers(session: Session, job_id: str, to: JobState) -> None:
    """A job ended: its event for the webhooks that want it, in the same transaction."""
    if not webhooks.any_subscription(session):
        return
    job = get_job(session, job_id)
    data = {"job_id": job.id, "kind": job.kind.value, "state": to.value,
            "model_name": job.model_name, "model_version": job.model_version,
            "message": job.message, "error": job.error}  # fmt: skip
    webhooks.record(session, f"job.{to.value}", job.id, data, job.submitted_by)


# --- births ----------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    kind: JobKind,
    model_name: str,
    spec: dict[str, Any],
    queue: str,
    model_version: int | None = None,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    submitted_by: str | None = None,
    priority: int = 0,
    message: str | None = None,
) -> JobOut:
    """A submitted job, born queued."""
    stamp = now()
    row = Job(
        id=str(uuid.uuid4()),
        kind=kind,
        state=JobState.queued,
        model_name=model_name,
        spec=spec,
        queue=queue,
        model_version=model_version,
        attempts=0,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        submitted_by=submitted_by,
        priority=priority,
        message=message,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(row)
    add_event(session, row.id, JobEventKind.queued, f"queued on {queue}")
    session.flush()
    return job_out(row)


def create_jobs(session: Session, submitted: list[dict[str, Any]]) -> list[JobOut]:
    """Submitted jobs, born queued, in one go: one multi-row INSERT of the jobs and one of
    their events, no ORM objects. Each of ``submitted`` holds ``create_job``'s keywords
    (without an idempotency key: a keyed submission checks for its earlier job first, and
    takes ``create_job``)."""
    if not submitted:
        return []
    stamp = now()
    rows = [
        {
            "kind": s["kind"],
            "model_name": s["model_name"],
            "spec": s["spec"],
            "queue": s["queue"],
            "model_version": s.get("model_version"),
            "max_attempts": s.get("max_attempts", 3),
            "submitted_by": s.get("submitted_by"),
            "priority": s.get("priority", 0),
            "message": s.get("message"),
            "id": str(uuid.uuid4()),
            "state": JobState.queued,
            "attempts": 0,
            "idempotency_key": None,
            "request_hash": None,
            "progress": None,
            "result": None,
            "error": None,
            "usage": None,
            "worker": None,
            "cancelled_by": None,
            "created_at": stamp,
            "updated_at": stamp,
            "started_at": None,
            "finished_at": None,
            "heartbeat_at": None,
        }
        for s in submitted
    ]
    session.execute(_JOBS.insert(), rows)
    events = [
        {"job_id": r["id"], "at": stamp, "kind": JobEventKind.queued,
         "message": f"queued on {r['queue']}", "worker": None}
        for r in rows
    ]  # fmt: skip
    session.execute(_EVENTS.insert(), events)
    return [JobOut.model_validate(r) for r in rows]


def served_record(
    item: ServeItem,
    state: JobState,
    *,
    model: str,
    version: int,
    queue: str,
    stamp: datetime,
    message: str,
    worker: str | None = None,
    started: datetime | None = None,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``jobs`` row of one sync prediction of ``model`` v``version`` (resolved), for
    ``record_waiting`` or ``record_served``: column → value. Its ``spec`` is made by
    ``PredictSpec``, which the reaper reads back when it sends a waiting prediction again
    as a job (``workers.jobs.run_predict_job``): the two cannot drift apart."""
    spec = PredictSpec(model_name=model, version=version, inputs=item.inputs,
                       outputs=item.outputs)  # fmt: skip
    finished = state.is_terminal()
    return {
        "id": item.id,
        "kind": JobKind.predict,
        "state": state,
        "model_name": model,
        "model_version": version,
        "spec": spec.model_dump(mode="json"),
        "queue": queue,
        "progress": None,
        "result": result,
        "error": error,
        "attempts": 1 if finished else 0,
        "max_attempts": 3,
        "priority": SERVE_PRIORITY,
        "usage": usage,
        "worker": worker,
        "message": message,
        "submitted_by": item.by,
        "created_at": item.at,
        "updated_at": stamp,
        "started_at": started,
        "finished_at": stamp if finished else None,
    }


def record_waiting(session: Session, record: dict[str, Any]) -> JobOut:
    """A sync prediction whose caller stops waiting, born queued (a ``served_record``),
    unless its worker recorded it first; return the job as it is now."""
    if record["state"] not in BORN_AS:
        raise ValueError(f"a waiting prediction is born queued, not {record['state']}")
    if session.get(Job, record["id"], populate_existing=True) is None:
        try:
            with session.begin_nested():
                session.execute(_JOBS.insert(), [record])
                add_event(session, record["id"], JobEventKind.queued, record["message"])
        except IntegrityError:
            pass  # its worker's write came first
    return get_job(session, record["id"])


def record_served(session: Session, records: list[dict[str, Any]]) -> int:
    """Record sync predictions as their worker ran them, in one go: a new job is born
    ended; a job already recorded as queued (its caller stopped waiting) is ended through
    the served edge; one that has moved otherwise (sent again as a job and run) is left
    as it is. Returns how many rows were written."""
    if not records:
        return 0
    if stray := {r["state"] for r in records} - SERVED_BORN_AS:
        raise ValueError(f"a served prediction is not born {sorted(stray)}")
    ids = [r["id"] for r in records]
    existing: dict[str, JobState] = {
        job_id: state
        for job_id, state in session.execute(sa.select(Job.id, Job.state).where(Job.id.in_(ids)))
    }
    new = [r for r in records if r["id"] not in existing]
    if new:  # the table's insert, not the ORM's: one executemany, no objects
        session.execute(_JOBS.insert(), new)
    written, ended = len(new), new
    for r in records:
        if existing.get(r["id"]) is JobState.queued and r["state"] in SERVED_FROM:
            values = {k: v for k, v in r.items() if k not in ("id", "state", "created_at")}
            if transition(session, r["id"], r["state"], served=True, **values):
                written += 1
                ended.append(r)
    events = [
        {"job_id": r["id"], "at": r["finished_at"], "kind": _ENDED_BY[r["state"]],
         "message": r["message"], "worker": r["worker"]}
        for r in ended
    ]  # fmt: skip
    if events:
        session.execute(_EVENTS.insert(), events)
    return written


# --- a worker's hold on a job ----------------------------------------------------------


def claim_job(session: Session, job_id: str, worker: str, lease_seconds: float) -> JobOut | None:
    """Take a job for ``worker``: a queued one, or a running one whose lease expired (its
    worker died) and that has attempts left. None when it is not there to take."""
    stamp = now()
    takeable = sa.or_(
        Job.state == JobState.queued,
        sa.and_(
            Job.heartbeat_at < stamp - timedelta(seconds=lease_seconds),
            Job.attempts < Job.max_attempts,
        ),
    )
    moved = transition(
        session,
        job_id,
        JobState.running,
        where=(takeable,),
        worker=worker,
        attempts=Job.attempts + 1,
        heartbeat_at=stamp,
        started_at=stamp,
        message=None,
    )
    if not moved:
        return None
    job = get_job(session, job_id)
    add_event(session, job_id, JobEventKind.claimed, f"attempt {job.attempts}", worker)
    return job


def _held_by(session: Session, job_id: str, worker: str, **values: Any) -> bool:
    """Write ``values`` on a job while ``worker`` holds it (running or cancelling)."""
    result = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.state.in_(sorted(HELD)))
        .values(**values)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def renew_lease(session: Session, job_id: str, worker: str) -> JobState | None:
    """Renew ``worker``'s lease on a job; return the job's state (``cancelling`` asks the
    worker to stop), or None when the job is no longer this worker's."""
    if not _held_by(session, job_id, worker, heartbeat_at=now()):
        return None
    return session.scalar(sa.select(Job.state).where(Job.id == job_id))


def set_progress(session: Session, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
    """Record progress of a running job; False when the job is no longer this worker's."""
    stamp = now()
    return _held_by(
        session, job_id, worker, progress=progress, heartbeat_at=stamp, updated_at=stamp
    )


def set_message(session: Session, job_id: str, message: str) -> None:
    """The latest thing a person should know of a job that has not ended."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.state.not_in(sorted(TERMINAL)))
        .values(message=message)
    )


def note_resumed(session: Session, job_id: str, worker: str, epoch: int) -> None:
    message = f"resumed from epoch {epoch}"
    add_event(session, job_id, JobEventKind.resumed, message, worker)
    set_message(session, job_id, message)


# --- ends ------------------------------------------------------------------------------


def finish_job(
    session: Session,
    job_id: str,
    state: JobState,
    *,
    message: str,
    worker: str | None = None,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    model_version: int | None = None,
    usage: dict[str, Any] | None = None,
    where: tuple[Any, ...] = (),
) -> bool:
    """End a job. With ``worker``, only while that worker still owns it."""
    values: dict[str, Any] = {"result": result, "error": error, "message": message}
    if usage is not None:
        values["usage"] = usage
    if model_version is not None:
        values["model_version"] = model_version
    if worker is not None:
        where = (*where, Job.worker == worker)
    moved = transition(session, job_id, state, where=where, **values)
    if moved:
        add_event(session, job_id, _ENDED_BY[state], message, worker)
    return moved


def request_cancel(session: Session, job_id: str, by: str | None = None) -> JobOut:
    """Cancel a queued job at once; ask the worker of a running one to stop (its job
    becomes ``cancelling``, then ``cancelled``). A finished job is a conflict."""
    before = "cancelled before it started"
    if transition(
        session,
        job_id,
        JobState.cancelled,
        only_from=frozenset({JobState.queued}),
        message=before,
        cancelled_by=by,
    ):
        add_event(session, job_id, JobEventKind.cancelled, before)
    elif transition(
        session, job_id, JobState.cancelling, message="cancel requested", cancelled_by=by
    ):
        add_event(session, job_id, JobEventKind.cancel_requested, "cancel requested")
    job = get_job(session, job_id)
    if job.state.is_terminal() and job.message != before:
        raise Conflict(
            f"job {job_id} has already {job.state.value}; there is nothing to cancel",
            field="job_id",
        )
    return job


def requeue(
    session: Session,
    job_id: str,
    *,
    reason: str,
    worker: str | None,
    charge_attempt: bool,
    expired_before: datetime | None = None,
) -> bool:
    """Put a running job back in the queue. A worker that shut down cleanly does not
    charge the job an attempt; a lease that expired does."""
    where: list[Any] = []
    if worker is not None:
        where.append(Job.worker == worker)
    if expired_before is not None:
        where.append(Job.heartbeat_at < expired_before)
    values: dict[str, Any] = {"message": reason}
    if not charge_attempt:
        values["attempts"] = Job.attempts - 1
    moved = transition(session, job_id, JobState.queued, where=tuple(where), **values)
    if moved:
        kind = JobEventKind.lease_expired if expired_before is not None else JobEventKind.requeued
        add_event(session, job_id, kind, reason, worker)
    return moved


# --- the reaper's part -----------------------------------------------------------------


def reap(session: Session, job: JobOut, lease_seconds: float) -> str:
    """Settle one job whose lease expired: ``requeued`` (to be sent again), ``failed``
    (out of attempts), ``cancelled`` (it was being cancelled), or ``skipped`` (its worker
    came back in the meantime)."""
    cutoff = now() - timedelta(seconds=lease_seconds)
    still_expired = (Job.heartbeat_at < cutoff,)
    worker = job.worker or "its worker"
    if job.state is JobState.cancelling:
        done = finish_job(
            session,
            job.id,
            JobState.cancelled,
            where=still_expired,
            message=f"cancelled; {worker} stopped renewing its lease",
        )
        return "cancelled" if done else "skipped"
    if job.attempts >= job.max_attempts:
        lost = WorkerLost(
            f"{worker} stopped renewing its lease (attempt {job.attempts} of "
            f"{job.max_attempts}): the job may be killing its workers; giving up"
        )
        done = finish_job(
            session,
            job.id,
            JobState.failed,
            where=still_expired,
            message=lost.detail,
            error=lost.to_dict(),
        )
        return "failed" if done else "skipped"
    moved = requeue(
        session,
        job.id,
        reason=f"lease expired: {worker} stopped renewing it; requeued",
        worker=None,
        charge_attempt=True,
        expired_before=cutoff,
    )
    return "requeued" if moved else "skipped"


def mark_sent(session: Session, job_id: str, message: str | None = None) -> None:
    """Note that a queued job's message was sent again now."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued)
        .values(updated_at=now(), message=message)
    )
    if message:
        add_event(session, job_id, JobEventKind.resent, message)
