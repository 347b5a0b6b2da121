"""The table of workers: each worker registers itself and renews ``last_seen_at``; one not
seen for a while is offline. What a worker runs now is read from the jobs it holds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.jobstate import HELD, now
from shared.schemas import WorkerOut

from .models import Job, Worker


def register(session: Session, **fields: Any) -> None:
    """Insert or replace a worker's row (a restarted worker keeps its name)."""
    stamp = now()
    row = session.get(Worker, fields["name"])
    if row is None:
        row = Worker(name=fields["name"])
        session.add(row)
    for key, value in fields.items():
        setattr(row, key, value)
    row.started_at = row.last_seen_at = stamp
    row.stopped_at = None
    session.flush()


def seen(session: Session, name: str) -> None:
    session.execute(
        sa.update(Worker).where(Worker.name == name).values(last_seen_at=now(), stopped_at=None)
    )


def stopped(session: Session, name: str) -> None:
    session.execute(sa.update(Worker).where(Worker.name == name).values(stopped_at=now()))


def list_workers(
    session: Session, offline_after_seconds: float, lease_seconds: float = 30.0
) -> list[WorkerOut]:
    cutoff = now() - timedelta(seconds=offline_after_seconds)
    running = session.execute(
        sa.select(Job.id, Job.worker).where(
            Job.state.in_(sorted(HELD)),
            Job.heartbeat_at >= now() - timedelta(seconds=lease_seconds),
        )
    ).all()
    out = []
    for row in session.scalars(sa.select(Worker).order_by(Worker.name)):
        state = "stopped" if row.stopped_at is not None else "online"
        if state == "online" and row.last_seen_at < cutoff:
            state = "offline"
        # A job's lease owner is "<node name>:<pid>".
        current = next(
            (job_id for job_id, owner in running if (owner or "").startswith(f"{row.name}:")),
            None,
        )
        worker = WorkerOut.model_validate(row, from_attributes=True)
        out.append(worker.model_copy(update={"state": state, "current_job": current}))
    return out


def served_queues(session: Session, offline_after_seconds: float) -> set[str]:
    return {
        queue
        for worker in list_workers(session, offline_after_seconds)
        if worker.state == "online"
        for queue in worker.queues
    }
