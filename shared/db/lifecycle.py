"""The reaper's queries: expired leases, queued jobs the broker lost, and the lock that
lets one reaper act at a time."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.jobstate import JobEventKind, JobState, now
from shared.schemas import JobOut

from .models import Job, Lock
from .store import _job_out, add_event, finish_job, requeue


def acquire_lock(session: Session, name: str, owner: str, ttl_seconds: float) -> bool:
    """Take or renew the lock ``name`` for ``owner`` until ttl from now; False while
    another owner holds an unexpired one."""
    stamp = now()
    expires = stamp + timedelta(seconds=ttl_seconds)
    result = session.execute(
        sa.update(Lock)
        .where(Lock.name == name, sa.or_(Lock.owner == owner, Lock.expires_at < stamp))
        .values(owner=owner, expires_at=expires)
    )
    if getattr(result, "rowcount", 0) == 1:
        return True
    if session.get(Lock, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Lock(name=name, owner=owner, expires_at=expires))
    except IntegrityError:
        return False
    return True


def release_lock(session: Session, name: str, owner: str) -> None:
    session.execute(sa.delete(Lock).where(Lock.name == name, Lock.owner == owner))


def expired_leases(session: Session, lease_seconds: float, limit: int = 500) -> list[JobOut]:
    cutoff = now() - timedelta(seconds=lease_seconds)
    rows = session.scalars(
        sa.select(Job)
        .where(
            Job.state.in_([JobState.running, JobState.cancelling]),
            Job.heartbeat_at < cutoff,
        )
        .order_by(Job.heartbeat_at)
        .limit(limit)
    )
    return [_job_out(r) for r in rows]


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
        message = (
            f"{worker} stopped renewing its lease (attempt {job.attempts} of "
            f"{job.max_attempts}): the job may be killing its workers; giving up"
        )
        done = finish_job(
            session,
            job.id,
            JobState.failed,
            where=still_expired,
            message=message,
            error={"type": "worker_lost", "message": message},
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


def stale_queued(session: Session, older_than_seconds: float, limit: int = 500) -> list[JobOut]:
    """Queued jobs not sent (or re-sent) for a while: the broker may have lost them."""
    cutoff = now() - timedelta(seconds=older_than_seconds)
    rows = session.scalars(
        sa.select(Job)
        .where(Job.state == JobState.queued, Job.updated_at < cutoff)
        .order_by(Job.updated_at)
        .limit(limit)
    )
    return [_job_out(r) for r in rows]


def mark_sent(session: Session, job_id: str, message: str | None = None) -> None:
    """Note that a queued job's message was sent again now."""
    session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.state == JobState.queued)
        .values(updated_at=now(), message=message)
    )
    if message:
        add_event(session, job_id, JobEventKind.resent, message)
