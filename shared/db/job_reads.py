"""Reading jobs: one job, a page of them, a job's history, and the reaper's two queries
(expired leases, jobs queued too long). Functions take a session and return pydantic
objects, never ORM rows. Every write of a job is ``shared.db.jobs``'s."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.jobstate import HELD, JobKind, JobState, now
from shared.schemas import JobEventOut, JobOut, JobPage

from .models import Job, JobEvent


def job_out(row: Job) -> JobOut:
    return JobOut.model_validate(row, from_attributes=True)


def get_job(session: Session, job_id: str) -> JobOut:
    row = session.get(Job, job_id, populate_existing=True)
    if row is None:
        raise NotFound(f"no job '{job_id}'", field="job_id")
    return job_out(row)


def find_idempotent(session: Session, key: str) -> tuple[JobOut, str | None] | None:
    """The job made for an Idempotency-Key, with the hash of the request that made it."""
    row = session.scalars(sa.select(Job).where(Job.idempotency_key == key)).first()
    return None if row is None else (job_out(row), row.request_hash)


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    kind: JobKind | None = None,
    model_name: str | None = None,
    submitted_by: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    where = []
    if submitted_by is not None:
        where.append(Job.submitted_by == submitted_by)
    if state is not None:
        where.append(Job.state == state)
    if kind is not None:
        where.append(Job.kind == kind)
    if model_name is not None:
        where.append(Job.model_name == model_name)
    total = session.scalar(sa.select(sa.func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        sa.select(Job)
        .where(*where)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    )
    return JobPage(items=[job_out(r) for r in rows], total=total, limit=limit, offset=offset)


def list_events(session: Session, job_id: str) -> list[JobEventOut]:
    get_job(session, job_id)  # 404 for an unknown job
    rows = session.scalars(
        sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
    )
    return [JobEventOut.model_validate(r, from_attributes=True) for r in rows]


# --- the reaper's queries --------------------------------------------------------------


def expired_leases(session: Session, lease_seconds: float, limit: int = 500) -> list[JobOut]:
    cutoff = now() - timedelta(seconds=lease_seconds)
    rows = session.scalars(
        sa.select(Job)
        .where(Job.state.in_(sorted(HELD)), Job.heartbeat_at < cutoff)
        .order_by(Job.heartbeat_at)
        .limit(limit)
    )
    return [job_out(r) for r in rows]


def stale_queued(session: Session, older_than_seconds: float, limit: int = 500) -> list[JobOut]:
    """Queued jobs not sent (or re-sent) for a while: the broker may have lost them."""
    cutoff = now() - timedelta(seconds=older_than_seconds)
    rows = session.scalars(
        sa.select(Job)
        .where(Job.state == JobState.queued, Job.updated_at < cutoff)
        .order_by(Job.updated_at)
        .limit(limit)
    )
    return [job_out(r) for r in rows]


def queue_depths(session: Session) -> list[tuple[str, int, float | None]]:
    """Each queue with queued jobs: how many, and how long the oldest has waited (s).
    One grouped read over the index on (state, created_at): cheap to scrape."""
    rows = session.execute(
        sa.select(Job.queue, sa.func.count(), sa.func.min(Job.created_at))
        .where(Job.state == JobState.queued)
        .group_by(Job.queue)
    ).all()
    stamp = now()
    return [
        (queue, int(n), (stamp - oldest).total_seconds() if oldest else None)
        for queue, n, oldest in rows
    ]


def counts_by_kind_and_state(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(
        sa.select(Job.kind, Job.state, sa.func.count()).group_by(Job.kind, Job.state)
    ).all()
    return [(JobKind(k).value, JobState(s).value, int(n)) for k, s, n in rows]


def pool_backlog(session: Session, pool: str) -> dict[str, object]:
    """What a pool's workers have to do: jobs queued for it (by kind), jobs running on it,
    and how long the oldest queued one has waited: what an autoscaler reads."""
    ours = sa.or_(
        Job.queue.like(f"train.{pool}.%"),
        Job.queue == f"predict.{pool}",
        Job.queue.like(f"predict.{pool}.%"),
    )
    rows = session.execute(
        sa.select(Job.state, Job.kind, sa.func.count(), sa.func.min(Job.created_at))
        .where(Job.state.in_([JobState.queued, *HELD]), ours)
        .group_by(Job.state, Job.kind)
    ).all()
    queued = {k.value: 0 for k in JobKind}
    running, oldest = 0, None
    for state, kind, n, first in rows:
        if JobState(state) is JobState.queued:
            queued[JobKind(kind).value] += int(n)
            oldest = first if oldest is None or (first and first < oldest) else oldest
        else:
            running += int(n)
    waited = (now() - oldest).total_seconds() if oldest is not None else 0.0
    return {"pool": pool, "queued": sum(queued.values()), "queued_by_kind": queued,
            "running": running, "oldest_queued_seconds": round(waited, 3)}  # fmt: skip
