"""Driving a sweep from durable storage: what the API does when a sweep is made, what a
worker does when one of its trials ends (and after each of a trial's epochs), and what
the reaper does for every running sweep each pass. Any of them may be killed at any
point; the next one to come along carries on from the database.

The search is Optuna's (its samplers and pruners), run on an in-memory study rebuilt
from the sweep's trials as recorded in this project's own tables (``shared.db.sweeps``)
each time a decision is needed. Optuna keeps no state of its own anywhere, so there are
no Optuna tables beside ours, and SQLite and PostgreSQL behave alike.

``advance`` locks the sweep, ends the trials whose jobs ended, asks for new trials while
fewer than ``parallel`` run and fewer than ``trials`` were made, and finishes the sweep
(pointing ``promote`` at the best trial's version) when the last one ends. A trial is
numbered under a unique constraint: a second process advancing at the same moment
fails to make the same trial, and tries again from what the first one wrote. The jobs it
made are sent after the commit; one that could not be sent is sent by the reaper.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import family_catalogue, job_reads, jobs, sweeps
from shared.db.session import session_scope
from shared.enqueue import send_job
from shared.errors import InvalidSpec, NotFound, Unavailable
from shared.jobstate import JobKind, JobState
from shared.routing import train_queue
from shared.schemas import JobOut, TrainSpec
from shared.sweep_schemas import Choice, IntRange, LogUniform, SweepOut, SweepRequest, TrialOut
from shared.sweep_space import apply, grid
from shared.sweepstate import TrialState
from shared.validation import check_params

log = logging.getLogger(__name__)
TRIES = 5


def _encode(value: Any) -> str:
    """A choice as Optuna's categorical takes it (its values must be plain scalars)."""
    return json.dumps(value, sort_keys=True)


def _distributions(req: SweepRequest) -> dict[str, Any]:
    from optuna import distributions as d

    out: dict[str, Any] = {}
    for key, dist in req.space.items():
        if isinstance(dist, Choice):
            out[key] = d.CategoricalDistribution([_encode(v) for v in dist.values])
        elif isinstance(dist, IntRange):
            step = None if dist.log else dist.step
            out[key] = d.IntDistribution(dist.low, dist.high, log=dist.log, step=step or 1)
        else:
            out[key] = d.FloatDistribution(dist.low, dist.high, log=isinstance(dist, LogUniform))
    return out


def _to_optuna(req: SweepRequest, params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _encode(v) if isinstance(req.space[k], Choice) else v
        for k, v in params.items()
        if k in req.space
    }


def _from_optuna(req: SweepRequest, params: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if isinstance(req.space[k], Choice) else v for k, v in params.items()}


def _sampler(req: SweepRequest, number: int) -> Any:
    import optuna

    # A sampler is made afresh for each decision: its seed follows the trial's number, so
    # that a sweep's trials do not all draw the same values.
    seed = req.seed * 100_003 + number
    if req.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if req.sampler == "grid":
        space = {k: [_encode(v) if isinstance(req.space[k], Choice) else v for v in vs]
                 for k, vs in grid(req).items()}  # fmt: skip
        return optuna.samplers.GridSampler(space, seed=req.seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(req.trials // 4, 2)))


def _pruner(req: SweepRequest) -> Any:
    import optuna

    if req.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(req.trials // 8, 1)))
    if req.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


_STATES = {
    TrialState.pending: "RUNNING",
    TrialState.complete: "COMPLETE",
    TrialState.pruned: "PRUNED",
    TrialState.failed: "FAIL",
    TrialState.cancelled: "FAIL",
}


def _frozen(req: SweepRequest, trial: TrialOut, dists: dict[str, Any]) -> Any:
    from optuna.trial import TrialState as OptunaState
    from optuna.trial import create_trial

    state = OptunaState[_STATES[trial.state]]
    return create_trial(
        state=state,
        value=trial.value if state is OptunaState.COMPLETE else None,
        params=_to_optuna(req, trial.params),
        distributions=dists,
        system_attrs=trial.system_attrs,
        intermediate_values={int(k): float(v) for k, v in trial.intermediate.items()},
    )


def _study(req: SweepRequest, trials: list[TrialOut], number: int) -> Any:
    """An in-memory study of the sweep's trials as recorded, for one decision."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=req.direction, sampler=_sampler(req, number), pruner=_pruner(req)
    )
    dists = _distributions(req)
    for trial in trials:
        if trial.state is TrialState.complete and trial.value is None:
            continue
        study.add_trial(_frozen(req, trial, dists))
    return study


def ask(req: SweepRequest, trials: list[TrialOut]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next trial's values (by the space's keys) and what the sampler noted."""
    study = _study(req, trials, len(trials))
    asked = study.ask(fixed_distributions=_distributions(req))
    attrs = dict(study.get_trials(deepcopy=False)[-1].system_attrs)
    return _from_optuna(req, asked.params), json.loads(json.dumps(attrs))


def _trial_spec(session: Session, sweep: SweepOut, req: SweepRequest, number: int,
                values: dict[str, Any]) -> TrainSpec:  # fmt: skip
    """The trial's training spec: the sweep's base spec with the trial's values."""
    base = dict(sweep.spec["base_spec"])
    applied = apply(base, values)
    family = family_catalogue.lookup(session, base["family"])
    if family is None:
        raise InvalidSpec(f"family '{base['family']}' is no longer known", field="family")
    applied["params"] = check_params(family, applied["params"])
    applied["trial"] = {"sweep_id": sweep.id, "number": number}
    return TrainSpec.model_validate(applied)


def _value(req: SweepRequest, job: JobOut) -> float | None:
    metrics = (job.result or {}).get("metrics") or {}
    value = metrics.get(req.metric)
    return float(value) if isinstance(value, int | float) else None


def _history(req: SweepRequest, job: JobOut) -> dict[str, float]:
    """The metric after each epoch, from a finished job's history (a trial that stopped
    early, before its last epoch, recorded none of its own)."""
    records = (job.result or {}).get("history") or []
    return {
        str(r["epoch"]): float(r[req.metric])
        for r in records
        if isinstance(r.get(req.metric), int | float)
    }


def _end_trials(session: Session, sweep: SweepOut, req: SweepRequest) -> None:
    """Trials whose jobs ended, ended as their jobs did."""
    for trial in sweep.trials:
        if trial.state is not TrialState.pending:
            continue
        job = job_reads.get_job(session, trial.job_id)
        if not job.state.is_terminal():
            continue
        epoch = int((job.progress or {}).get("epoch", trial.epoch))
        if job.state is JobState.succeeded:
            value = _value(req, job)
            to = TrialState.complete if value is not None else TrialState.failed
            sweeps.end_trial(session, sweep.id, trial.number, to, value=value, epoch=epoch,
                             intermediate=trial.intermediate or _history(req, job))  # fmt: skip
        else:
            to = TrialState.failed if job.state is JobState.failed else TrialState.cancelled
            sweeps.end_trial(session, sweep.id, trial.number, to, epoch=epoch)


def _best(trials: list[TrialOut], req: SweepRequest) -> TrialOut | None:
    done = [t for t in trials if t.state is TrialState.complete and t.value is not None]
    if not done:
        return None
    sign = -1.0 if req.direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number))


def _queue_of(spec: TrainSpec) -> str:
    r = spec.resources
    return train_queue(r.pool, r.devices, r.min_device_memory_gb, spec.family)


def _new_trials(session: Session, sweep: SweepOut, req: SweepRequest) -> list[JobOut]:
    made: list[JobOut] = []
    trials = list(sweep.trials)
    pending = sum(t.state is TrialState.pending for t in trials)
    while len(trials) < req.trials and pending < req.parallel:
        number = len(trials)
        values, attrs = ask(req, trials)
        spec = _trial_spec(session, sweep, req, number, values)
        job = jobs.create_job(
            session,
            kind=JobKind.train,
            model_name=spec.model_name,
            spec=spec.model_dump(mode="json"),
            queue=_queue_of(spec),
            priority=int(sweep.spec.get("priority", 0)),
            max_attempts=int(sweep.spec.get("max_attempts", 3)),
            submitted_by=sweep.submitted_by,
            message=f"trial {number} of sweep {sweep.id}",
        )
        sweeps.add_trial(session, sweep.id, number, job.id, values, attrs)
        made.append(job)
        stamp = job.created_at
        trials.append(TrialOut(number=number, state=TrialState.pending, params=values,
                               value=None, epoch=0, job_id=job.id, created_at=stamp,
                               ended_at=None, system_attrs=attrs))  # fmt: skip
        pending += 1
    return made


def _finish(session: Session, sweep: SweepOut, req: SweepRequest) -> None:
    from shared.db import aliases

    best = _best(sweep.trials, req)
    if best is None:
        sweeps.finish(session, sweep.id, f"all {req.trials} trials ended; none completed")
        return
    message = f"best: trial {best.number}, {req.metric} {best.value:.6g}"
    if req.promote and best.model_version is not None:
        who = sweep.submitted_by or "sweep"
        try:
            aliases.point(session, sweep.model_name, req.promote, best.model_version, who,
                          f"sweep {sweep.id}")  # fmt: skip
            message += f"; {req.promote} → v{best.model_version}"
        except (InvalidSpec, NotFound) as exc:  # the sweep still ends, and says why
            message += f"; {req.promote} not pointed: {exc.detail}"
    sweeps.finish(session, sweep.id, message)


def advance_in(session: Session, sweep_id: str) -> list[JobOut]:
    """One step of the sweep in ``session`` (the caller commits, then sends the jobs)."""
    sweep = sweeps.locked(session, sweep_id)
    if sweep.state.is_terminal():
        return []
    req = SweepRequest.model_validate(sweep.spec["request"])
    _end_trials(session, sweep, req)
    sweep = sweeps.locked(session, sweep_id)  # as the ended trials left it
    made = _new_trials(session, sweep, req)
    # New trials are pending: they change neither the best nor whether the sweep is over.
    best = _best(sweep.trials, req)
    shown = f"best so far: trial {best.number}, {req.metric} {best.value:.6g}" if best else None
    sweeps.set_best(session, sweep.id, best.number if best else None, shown)
    over = len(sweep.trials) >= req.trials and not sweep.counts.get(TrialState.pending.value)
    if over and not made:
        _finish(session, sweep, req)
    return made


def send_all(made: list[JobOut]) -> None:
    for job in made:
        try:
            send_job(job)
        except Unavailable as exc:  # recorded: the reaper sends it once the broker answers
            log.warning("trial job %s not sent yet: %s", job.id, exc.detail)


def advance(sweep_id: str) -> list[JobOut]:
    """Advance the sweep in a transaction of its own, then send the jobs it made."""
    for _ in range(TRIES):
        try:
            with session_scope() as s:
                made = advance_in(s, sweep_id)
        except IntegrityError:  # another process made the same trial: read it, go on
            continue
        send_all(made)
        return made
    log.warning("sweep %s: could not advance after %d tries", sweep_id, TRIES)
    return []


class TrialPruner:
    """A trial's pruner in the worker that trains it: after each epoch it says whether the
    trial stops there. It decides on an in-memory study of the sweep's ended trials and
    this one, read again at most every ``REFRESH_SECONDS`` (trials end seconds apart;
    epochs may take milliseconds), and writes nothing until the trial ends: the metric
    after each epoch, and what the pruner noted on the trial (successive halving's rungs),
    are recorded when it is pruned or has trained its last epoch."""

    REFRESH_SECONDS = 1.0

    def __init__(self, sweep_id: str, number: int) -> None:
        self.sweep_id, self.number = sweep_id, number
        with session_scope() as s:
            sweep = sweeps.get_sweep(s, sweep_id)
        self.req = SweepRequest.model_validate(sweep.spec["request"])
        this = next(t for t in sweep.trials if t.number == number)
        self.trial = this.model_copy(update={"intermediate": dict(this.intermediate)})
        self._live: Any = None
        self._read_at = -float("inf")

    def _refresh(self) -> None:
        """The study anew from the ended trials, with this one in it as it stands."""
        import optuna

        with session_scope() as s:
            sweep = sweeps.get_sweep(s, self.sweep_id)
        ended = [t for t in sweep.trials if t.state.is_terminal() and t.number != self.number]
        study = _study(self.req, ended, self.number)
        study.add_trial(_frozen(self.req, self.trial, _distributions(self.req)))
        self._live = optuna.trial.Trial(study, study.get_trials(deepcopy=False)[-1]._trial_id)
        self._read_at = time.monotonic()

    def report(self, record: dict[str, Any], last: bool = False) -> bool:
        """Epoch ``record`` ended; True when the trial is pruned here (then recorded so)."""
        epoch = int(record["epoch"])
        value = record.get(self.req.metric)
        pruning = self.req.pruner != "none" and isinstance(value, int | float) and not last
        if pruning and time.monotonic() - self._read_at > self.REFRESH_SECONDS:
            self._refresh()
        self.trial.epoch = epoch
        if isinstance(value, int | float):
            self.trial.intermediate[str(epoch)] = float(value)
        if not pruning:
            if last:
                self._record()
            return False
        self._live.report(float(value), epoch)  # type: ignore[arg-type]
        pruned = bool(self._live.should_prune())
        attrs = self._live.study.get_trials(deepcopy=False)[-1].system_attrs
        self.trial.system_attrs = json.loads(json.dumps(attrs))
        if not pruned:
            return False
        with session_scope() as s:
            return sweeps.end_trial(
                s, self.sweep_id, self.number, TrialState.pruned, epoch=epoch,
                intermediate=self.trial.intermediate, system_attrs=self.trial.system_attrs,
            )  # fmt: skip

    def _record(self) -> None:
        with session_scope() as s:
            sweeps.record_epochs(s, self.sweep_id, self.number, self.trial.epoch,
                                 self.trial.intermediate, self.trial.system_attrs)  # fmt: skip
