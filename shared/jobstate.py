"""The job state machine as data: the states, how a job is born, and the transitions
allowed between states. ``shared.db.jobs`` applies them, each as one conditional UPDATE;
nothing else writes a job.

    (born) ──▶ queued ──claim──▶ running ──▶ succeeded | failed
                 │      ◀─requeue─┘ │ (lease expired, or its worker shut down: a retry)
                 │                  └──cancel──▶ cancelling ──▶ cancelled | succeeded | failed
                 ├──cancel──▶ cancelled
                 └──served──▶ succeeded | failed   (a sync prediction's record, only)
    (served) ──▶ succeeded | failed

A sync prediction runs before it is recorded: its worker's record is born ended. When
its caller stopped waiting first, the API recorded it queued, and the worker's record
ends it through the served edge, which no other write may take.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime


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


# The states in which a worker holds a job (and renews its lease).
HELD = frozenset({JobState.running, JobState.cancelling})
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


# How a job is born: queued, but for a sync prediction's record, born ended.
BORN_AS = frozenset({JobState.queued})
SERVED_BORN_AS = frozenset({JobState.succeeded, JobState.failed})
# The served edge: to-state -> the states a served record may end.
SERVED_FROM: Mapping[JobState, frozenset[JobState]] = {
    JobState.succeeded: frozenset({JobState.queued}),
    JobState.failed: frozenset({JobState.queued}),
}


def now() -> datetime:
    return datetime.now(UTC)
