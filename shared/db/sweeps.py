"""Sweeps and their trials: the one writer of both (``shared.sweepstate`` is their state
machine), and their reads. A trial is numbered under a unique constraint, so that two
processes advancing one sweep at once can never make the same trial twice: one of them
fails to insert it, and tries again from what the other wrote."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.jobstate import now
from shared.sweep_schemas import SweepOut, SweepPage, TrialOut
from shared.sweepstate import SWEEP_FROM, TRIAL_FROM, SweepState, TrialState

from . import webhooks
from .models import Job, Sweep, SweepTrial


def _trial_out(
    row: SweepTrial, model_version: int | None, progress: dict[str, Any] | None, metric: str
) -> TrialOut:
    """A trial as shown; a pending one with the epoch its job has reached and its metric
    there, from the job's progress (what its worker wrote last)."""
    out = TrialOut.model_validate(row, from_attributes=True)
    update: dict[str, Any] = {"model_version": model_version}
    if row.state is TrialState.pending and progress:
        update["epoch"] = max(row.epoch, int(progress.get("epoch") or 0))
        latest = (progress.get("metrics") or {}).get(metric)
        update["latest"] = float(latest) if isinstance(latest, int | float) else None
    return out.model_copy(update=update)


def _sweep_out(session: Session, row: Sweep, with_trials: bool = True) -> SweepOut:
    query = (
        sa.select(SweepTrial, Job.model_version, Job.progress)
        .join(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == row.id)
        .order_by(SweepTrial.number)
    )
    metric = str((row.spec.get("request") or {}).get("metric", ""))
    trials = [_trial_out(t, v, p, metric) for t, v, p in session.execute(query).all()]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    best = next((t for t in trials if t.number == row.best_trial), None)
    out = SweepOut.model_validate(row, from_attributes=True)
    return out.model_copy(
        update={"trials": trials if with_trials else [], "best": best, "counts": counts}
    )


def create_sweep(
    session: Session, *, spec: dict[str, Any], model_name: str, submitted_by: str | None
) -> str:
    stamp = now()
    row = Sweep(
        id=str(uuid.uuid4()),
        state=SweepState.running,
        model_name=model_name,
        spec=spec,
        best_trial=None,
        message=None,
        submitted_by=submitted_by,
        created_at=stamp,
        updated_at=stamp,
        finished_at=None,
    )
    session.add(row)
    session.flush()
    return row.id


def _row(session: Session, sweep_id: str, *, lock: bool = False) -> Sweep:
    query = sa.select(Sweep).where(Sweep.id == sweep_id)
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"no sweep '{sweep_id}'", field="sweep_id")
    return row


def locked(session: Session, sweep_id: str) -> SweepOut:
    """The sweep, its row locked until the transaction ends (PostgreSQL; SQLite writes
    one transaction at a time anyway), so that advancing it is one process's at a time."""
    return _sweep_out(session, _row(session, sweep_id, lock=True))


def get_sweep(session: Session, sweep_id: str, viewer: str | None = None) -> SweepOut:
    """A sweep with its trials; ``viewer``: a key that sees only its own (404 for others)."""
    row = _row(session, sweep_id)
    if viewer is not None and row.submitted_by != viewer:
        raise NotFound(f"no sweep '{sweep_id}'", field="sweep_id")
    return _sweep_out(session, row)


def list_sweeps(
    session: Session, *, viewer: str | None, limit: int = 50, offset: int = 0
) -> SweepPage:
    query = sa.select(Sweep).order_by(Sweep.created_at.desc()).limit(limit).offset(offset)
    if viewer is not None:
        query = query.where(Sweep.submitted_by == viewer)
    items = [_sweep_out(session, row, with_trials=False) for row in session.scalars(query)]
    return SweepPage(items=items, limit=limit, offset=offset)


def running_ids(session: Session) -> list[str]:
    query = sa.select(Sweep.id).where(Sweep.state == SweepState.running)
    return list(session.scalars(query.order_by(Sweep.created_at)))


def add_trial(
    session: Session,
    sweep_id: str,
    number: int,
    job_id: str,
    params: dict[str, Any],
    system_attrs: dict[str, Any],
) -> None:
    """A new trial, pending on its job; IntegrityError when ``number`` exists already."""
    session.add(
        SweepTrial(
            sweep_id=sweep_id,
            number=number,
            job_id=job_id,
            state=TrialState.pending,
            params=params,
            system_attrs=system_attrs,
            value=None,
            intermediate={},
            epoch=0,
            created_at=now(),
            ended_at=None,
        )
    )
    session.flush()


def end_trial(
    session: Session,
    sweep_id: str,
    number: int,
    to: TrialState,
    *,
    value: float | None = None,
    epoch: int | None = None,
    intermediate: dict[str, float] | None = None,
    system_attrs: dict[str, Any] | None = None,
) -> bool:
    """A pending trial ends (one conditional UPDATE); whether it moved. ``intermediate``:
    its metric after each epoch, and ``system_attrs`` what the sampler and the pruner
    noted on it, where the caller has them."""
    values: dict[str, Any] = {"state": to, "value": value, "ended_at": now()}
    if epoch is not None:
        values["epoch"] = epoch
    if intermediate is not None:
        values["intermediate"] = intermediate
    if system_attrs is not None:
        values["system_attrs"] = system_attrs
    stmt = (
        sa.update(SweepTrial)
        .where(
            SweepTrial.sweep_id == sweep_id,
            SweepTrial.number == number,
            SweepTrial.state.in_(sorted(TRIAL_FROM[to])),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(session.execute(stmt), "rowcount", 0) == 1)


def record_epochs(
    session: Session,
    sweep_id: str,
    number: int,
    epoch: int,
    intermediate: dict[str, float],
    system_attrs: dict[str, Any],
) -> None:
    """A pending trial's metric after each epoch, and what its pruner noted (what the
    pruner compares the next trials with)."""
    session.execute(
        sa.update(SweepTrial)
        .where(
            SweepTrial.sweep_id == sweep_id,
            SweepTrial.number == number,
            SweepTrial.state == TrialState.pending,
        )
        .values(epoch=epoch, intermediate=intermediate, system_attrs=system_attrs)
        .execution_options(synchronize_session=False)
    )


def _move(session: Session, sweep_id: str, to: SweepState, **values: Any) -> bool:
    stamp: datetime = now()
    stmt = (
        sa.update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.state.in_(sorted(SWEEP_FROM[to])))
        .values(state=to, updated_at=stamp, finished_at=stamp, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(session.execute(stmt), "rowcount", 0) == 1)


def set_best(session: Session, sweep_id: str, best: int | None, message: str | None) -> None:
    session.execute(
        sa.update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(best_trial=best, message=message, updated_at=now())
        .execution_options(synchronize_session=False)
    )


def finish(session: Session, sweep_id: str, message: str) -> bool:
    """The sweep ended, every trial done; its event for the webhooks that want it."""
    if not _move(session, sweep_id, SweepState.finished, message=message):
        return False
    if webhooks.any_subscription(session):
        sweep = get_sweep(session, sweep_id)
        best = sweep.best.model_dump(mode="json", exclude={"system_attrs"}) if sweep.best else None
        data = {"sweep_id": sweep.id, "model_name": sweep.model_name, "message": message,
                "counts": sweep.counts, "best": best}  # fmt: skip
        webhooks.record(session, "sweep.finished", sweep.id, data, sweep.submitted_by)
    return True


def cancel(session: Session, sweep_id: str, message: str) -> bool:
    return _move(session, sweep_id, SweepState.cancelled, message=message)
