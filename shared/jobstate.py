"""The job state machine: the states, the transitions allowed between them, and the one
function that moves a job from one state to another. Nothing else writes a job's state.

    queued ──claim──▶ running ──▶ succeeded | failed
      │      ◀─requeue─┘ │ (lease expired, or its worker shut down: a retry)
      │                  └──cancel──▶ cancelling ──▶ cancelled | succeeded | failed
      └──cancel──▶ cancelled
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session


class JobKind(enum.StrEnum):
    train = "train"
    predict = "predict"


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def is_terminal(self) -> bool:
        return self in TERMINAL


class JobEventKind(enum.StrEnum):
    """What a job's history records."""

    queued = "queued"
    claimed = "claimed"
    resumed = "resumed"
    lease_expired = "lease_expired"
    requeued = "requeued"
    resent = "resent"
    cancel_requested = "cancel_requested"
    cancelled = "cancelled"
    succeeded = "succeeded"
    failed = "failed"


TERMINAL = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})

# to-state -> the states a job may be in for the transition to apply.
ALLOWED_FROM: Mapping[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running}),
    # running → running: another worker takes over a job whose lease expired.
    JobState.running: frozenset({JobState.queued, JobState.running}),
    JobState.cancelling: frozenset({JobState.running}),
    JobState.succeeded: frozenset({JobState.running, JobState.cancelling}),
    JobState.failed: frozenset({JobState.queued, JobState.running, JobState.cancelling}),
    JobState.cancelled: frozenset({JobState.queued, JobState.cancelling}),
}


def now() -> datetime:
    return datetime.now(UTC)


def transition(
    session: Session,
    job_id: str,
    to: JobState,
    *,
    only_from: frozenset[JobState] | None = None,
    where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """Move a job to ``to`` with one conditional UPDATE; return whether it moved.

    The UPDATE applies only while the job is in a state that allows the transition
    (narrowed further by ``only_from``), so two processes racing for the same job cannot
    both win: a duplicated message, a late cancel or a second worker finds nothing to do.
    ``where`` adds conditions (a lease that expired, a worker that still owns the job);
    ``values`` are other columns written in the same statement. The caller commits.
    """
    from shared.db.models import Job  # the ORM model imports this module's enums

    sources = ALLOWED_FROM[to] if only_from is None else ALLOWED_FROM[to] & only_from
    if not sources:
        raise ValueError(f"no transition to {to.value} from {sorted(only_from or ())}")
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
    result = session.execute(stmt)
    return bool(getattr(result, "rowcount", 0) == 1)
