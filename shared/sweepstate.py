"""The sweep and trial state machines as data. ``shared.db.sweeps`` applies them, each as
one conditional UPDATE; nothing else writes a sweep or a trial.

A sweep:

    (born) ──▶ running ──▶ finished     (every trial asked for has ended)
                  └──cancel──▶ cancelled (its trials' jobs are cancelled with it)

A trial is one ordinary training job of the sweep; its state follows its job's end:

    (born) ──▶ pending ──▶ complete   (the job succeeded: its metric is the trial's value)
                  ├──────▶ pruned     (the pruner stopped it after an epoch)
                  ├──────▶ failed     (the job failed)
                  └──────▶ cancelled  (the job was cancelled, or the sweep was)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class SweepState(enum.StrEnum):
    running = "running"
    finished = "finished"
    cancelled = "cancelled"

    def is_terminal(self) -> bool:
        return self is not SweepState.running


class TrialState(enum.StrEnum):
    pending = "pending"
    complete = "complete"
    pruned = "pruned"
    failed = "failed"
    cancelled = "cancelled"

    def is_terminal(self) -> bool:
        return self is not TrialState.pending


SWEEP_FROM: Mapping[SweepState, frozenset[SweepState]] = {
    SweepState.finished: frozenset({SweepState.running}),
    SweepState.cancelled: frozenset({SweepState.running}),
}
TRIAL_FROM: Mapping[TrialState, frozenset[TrialState]] = {
    state: frozenset({TrialState.pending}) for state in TrialState if state.is_terminal()
}
