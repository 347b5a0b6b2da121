"""Hyperparameter sweeps: many ordinary training jobs, asked for by a search
(``shared.sweep_driver``) as earlier ones end."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth import JobsRead, JobsSubmit, TrainSubmit
from api.deps import SessionDep
from api.inline import store_inline
from api.routes.jobs import training_lookups
from shared import sweep_driver, sweep_space
from shared.db import jobs, sweeps
from shared.errors import Conflict
from shared.schemas import MAX_OFFSET, ErrorOut
from shared.sweep_schemas import SweepOut, SweepPage, SweepRequest
from shared.sweepstate import TrialState

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422, 503)
}


@router.post("", status_code=201, responses=ERRORS)
def create_sweep(req: SweepRequest, session: SessionDep, who: TrainSubmit) -> SweepOut:
    """Start a sweep: its space is checked against the base job's family and settings
    (422 naming ``space.<key>``), then its first ``parallel`` trials are queued."""
    family, found, validation = training_lookups(session, who, req.base)
    spec = sweep_space.check(req, family, found, validation)
    if req.base.dataset.inline is not None:
        spec.dataset = store_inline(session, who, spec.model_name, req.base.dataset.inline)
    # The request as given, but for inline rows: those are a data set version now, which
    # the stored request names instead of carrying them.
    request = req.model_dump(mode="json", exclude={"base": {"dataset": {"inline"}}})
    if req.base.dataset.inline is not None:
        request["base"]["dataset"] = {"name": spec.dataset.name, "version": spec.dataset.version}
    body = {
        "request": request,
        "base_spec": spec.model_dump(mode="json"),
        "priority": req.base.priority,
        "max_attempts": req.base.max_attempts,
    }
    sweep_id = sweeps.create_sweep(
        session, spec=body, model_name=spec.model_name, submitted_by=who.key_id
    )
    made = sweep_driver.advance_in(session, sweep_id)
    session.commit()
    sweep_driver.send_all(made)
    return sweeps.get_sweep(session, sweep_id)


@router.get("", responses=ERRORS)
def list_sweeps(
    session: SessionDep,
    who: JobsRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SweepPage:
    """Newest first, without their trials; a key lists its own sweeps, admin all."""
    return sweeps.list_sweeps(session, viewer=who.viewer, limit=limit, offset=offset)


@router.get("/{sweep_id}", responses=ERRORS)
def get_sweep(sweep_id: str, session: SessionDep, who: JobsRead) -> SweepOut:
    """The sweep with every trial (its values, state, metric, epoch, job and model
    version) and the best so far."""
    return sweeps.get_sweep(session, sweep_id, who.viewer)


@router.post("/{sweep_id}/cancel", responses=ERRORS)
def cancel_sweep(sweep_id: str, session: SessionDep, who: JobsSubmit) -> SweepOut:
    """Cancel the sweep and its running trials; 409 when it has ended."""
    sweep = sweeps.get_sweep(session, sweep_id, who.viewer)
    if not sweeps.cancel(session, sweep.id, f"cancelled by {who.name}"):
        raise Conflict(f"sweep {sweep_id} is {sweep.state.value} already")
    for trial in sweep.trials:
        if trial.state is TrialState.pending:
            sweeps.end_trial(session, sweep.id, trial.number, TrialState.cancelled)
            with contextlib.suppress(Conflict):  # its job ended meanwhile
                jobs.request_cancel(session, trial.job_id, by=who.key_id)
    return sweeps.get_sweep(session, sweep_id, who.viewer)
