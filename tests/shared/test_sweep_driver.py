"""The sweep driver against a real database and Redis, without workers: processes that
advance one sweep at the same moment make each trial once, never more at once than the
sweep allows, never more in all than it asked for; and the sweep ends when they have."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared import sweep_driver, sweep_space
from shared.db import jobs, sweeps
from shared.db.session import session_scope
from shared.families import FAMILIES
from shared.jobstate import JobKind
from shared.sweep_driver import TrialPruner
from shared.sweep_schemas import SweepRequest
from shared.sweepstate import SweepState, TrialState
from tests.helpers import unique

BASE: dict[str, Any] = {
    "family": "mlp",
    "dataset": {"builtin": "iris"},
    "resources": {"pool": "nobody"},
}
REQUEST: dict[str, Any] = {
    "base": BASE,
    "space": {"params.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}},
    "trials": 5,
    "parallel": 2,
    "sampler": "random",
}


def _sweep() -> str:
    body = {**REQUEST, "base": {**BASE, "model_name": unique("driven")}}
    req = SweepRequest.model_validate(body)
    spec = sweep_space.check(req, FAMILIES["mlp"])
    with session_scope() as s:
        return sweeps.create_sweep(
            s,
            spec={
                "request": req.model_dump(mode="json"),
                "base_spec": spec.model_dump(mode="json"),
            },
            model_name=spec.model_name,
            submitted_by=None,
        )


def _advance_at_once(sweep_id: str, callers: int = 6) -> None:
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(sweep_driver.advance, [sweep_id] * callers))


def _end_pending(sweep_id: str) -> None:
    """Their jobs end (cancelled while queued), as a worker's or a user's would."""
    with session_scope() as s:
        for t in sweeps.get_sweep(s, sweep_id).trials:
            if t.state is TrialState.pending:
                jobs.request_cancel(s, t.job_id, by="test")


def test_racing_advancers_make_each_trial_once_within_the_limits() -> None:
    sweep_id = _sweep()
    _advance_at_once(sweep_id)
    with session_scope() as s:
        first = sweeps.get_sweep(s, sweep_id)
    assert [t.number for t in first.trials] == [0, 1]
    assert len({t.job_id for t in first.trials}) == 2
    values = [t.params["params.dropout"] for t in first.trials]
    assert all(0.0 <= v <= 0.5 for v in values) and values[0] != values[1]

    for made in (4, 5, 5):
        _end_pending(sweep_id)
        _advance_at_once(sweep_id)
        with session_scope() as s:
            now = sweeps.get_sweep(s, sweep_id)
        assert [t.number for t in now.trials] == list(range(made))
    assert now.state is SweepState.finished
    assert now.counts == {"cancelled": 5}
    assert now.message == "all 5 trials ended; none completed"


def _trial(sweep_id: str, number: int) -> None:
    with session_scope() as s:
        job = jobs.create_job(s, kind=JobKind.train, model_name="pruned", spec={}, queue="q")
        sweeps.add_trial(s, sweep_id, number, job.id, {"params.dropout": 0.1}, {})


def _trained(sweep_id: str, number: int, accuracy: float, epochs: int = 16) -> bool:
    """A trial's worker reporting every epoch; whether it was pruned."""
    _trial(sweep_id, number)
    pruner = TrialPruner(sweep_id, number)
    for epoch in range(1, epochs + 1):
        if pruner.report({"epoch": epoch, "val_accuracy": accuracy}, last=epoch == epochs):
            return True
    with session_scope() as s:
        sweeps.end_trial(s, sweep_id, number, TrialState.complete, value=accuracy)
    return False


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_a_trial_behind_the_others_is_pruned_and_recorded_where(pruner: str) -> None:
    body = {**REQUEST, "base": {**BASE, "model_name": unique("pruned")}, "trials": 20,
            "metric": "val_accuracy", "pruner": pruner}  # fmt: skip
    req = SweepRequest.model_validate(body)
    with session_scope() as s:
        sweep_id = sweeps.create_sweep(
            s, spec={"request": req.model_dump(mode="json")}, model_name="m", submitted_by=None
        )
    assert [_trained(sweep_id, n, 0.9 + n / 100) for n in range(6)] == [False] * 6
    assert _trained(sweep_id, 6, 0.2)
    assert not _trained(sweep_id, 7, 0.99)
    with session_scope() as s:
        trials = sweeps.get_sweep(s, sweep_id).trials
    bad = trials[6]
    assert bad.state is TrialState.pruned and bad.epoch < 16
    assert bad.intermediate == {str(e): 0.2 for e in range(1, bad.epoch + 1)}
    assert trials[0].intermediate == {str(e): 0.9 for e in range(1, 17)}
    if pruner == "successive_halving":  # the rungs it noted on a trial, once one completed
        assert any(k.startswith("completed_rung_") for k in trials[5].system_attrs)
