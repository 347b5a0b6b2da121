"""The sweep driver against a real database and Redis, without workers: processes that
advance one sweep at the same moment make each trial once, never more at once than the
sweep allows, never more in all than it asked for; and the sweep ends when they have."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from shared import sweep_driver, sweep_space
from shared.db import jobs, sweeps
from shared.db.session import session_scope
from shared.families import FAMILIES
from shared.sweep_schemas import SweepRequest
from shared.sweepstate import SweepState, TrialState
from tests.helpers import unique

REQUEST = {
    "base": {"family": "mlp", "dataset": {"builtin": "iris"}, "resources": {"pool": "nobody"}},
    "space": {"params.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}},
    "trials": 5,
    "parallel": 2,
    "sampler": "random",
}


def _sweep() -> str:
    body = {**REQUEST, "base": {**REQUEST["base"], "model_name": unique("driven")}}
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
