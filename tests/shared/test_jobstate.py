from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.db import job_reads, jobs
from shared.db.jobs import transition
from shared.db.session import session_scope
from shared.jobstate import ALLOWED_FROM, TERMINAL, JobKind, JobState, now
from shared.schemas import (
    BYTES_READ_LATER,
    PredictSpec,
    ServeBatch,
    ServeItem,
    ServeRequest,
    Tensor,
)
from tests.helpers import unique


def _new_job() -> str:
    with session_scope() as s:
        job = jobs.create_job(s, kind=JobKind.train, model_name=unique("m"), spec={}, queue="train")
    return job.id


def test_a_queued_job_is_claimed_once_however_many_workers_race() -> None:
    job_id = _new_job()

    def claim(i: int) -> bool:
        with session_scope() as s:
            return jobs.claim_job(s, job_id, f"w{i}@host", 30) is not None

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(claim, range(8)))
    assert wins.count(True) == 1
    with session_scope() as s:
        job = job_reads.get_job(s, job_id)
    assert job.state is JobState.running
    assert job.attempts == 1
    assert job.started_at is not None and job.started_at.tzinfo is not None


def test_a_finished_job_never_moves_again() -> None:
    job_id = _new_job()
    with session_scope() as s:
        assert jobs.claim_job(s, job_id, "w@host", 30) is not None
        assert jobs.finish_job(s, job_id, JobState.succeeded, result={"ok": True}, message="ok")
    for to in JobState:
        with session_scope() as s:
            assert not transition(s, job_id, to)
    with session_scope() as s:
        job = job_reads.get_job(s, job_id)
    assert job.state is JobState.succeeded
    assert job.result == {"ok": True}
    assert job.finished_at is not None


def test_a_queued_job_cannot_succeed_without_being_claimed() -> None:
    job_id = _new_job()
    with session_scope() as s:
        assert not jobs.finish_job(s, job_id, JobState.succeeded, message="no")
        assert job_reads.get_job(s, job_id).state is JobState.queued


def test_terminal_states_have_no_way_out() -> None:
    for sources in ALLOWED_FROM.values():
        assert not sources & TERMINAL
    assert {s for s in JobState if s.is_terminal()} == TERMINAL


def test_an_impossible_narrowing_is_refused() -> None:
    with session_scope() as s, pytest.raises(ValueError, match="no transition"):
        transition(s, "x", JobState.running, only_from=frozenset({JobState.failed}))


def _served(state: JobState, job_id: str | None = None) -> dict[str, Any]:
    item = ServeItem(id=job_id or str(uuid.uuid4()), inputs=[[1.0]], outputs="json", by=None,
                     at=now())  # fmt: skip
    return jobs.served_record(item, state, model=unique("served"), version=1,
                              queue="predict.default", stamp=now(), message="served",
                              worker="w@host", started=now(), result={"outputs": []})  # fmt: skip


TENSOR = {"dtype": "float32", "shape": [1, 2], "data": "AACAPwAAAEA="}


@pytest.mark.parametrize("inputs", [[[1.0, 2.0], [3.5, -4.0]], ["a text", "another"], TENSOR])
@pytest.mark.parametrize("through", ["the API", "a message"])
def test_a_served_records_spec_is_the_job_it_is_sent_again_as(inputs: Any, through: str) -> None:
    """A waiting prediction whose batch is lost is sent again by the reaper as a job, whose
    worker reads the stored spec with ``PredictSpec.model_validate``."""
    req = ServeRequest.model_validate({"inputs": inputs, "outputs": "tensor"})
    item = ServeItem.model_construct(  # as the route makes it
        id=str(uuid.uuid4()), inputs=req.inputs, outputs=req.outputs, by=None, at=now()
    )
    if through == "a message":  # the worker's records come from the message it read
        batch = ServeBatch(model="m", version="latest", queue="q", reply="r", items=[item])
        wire = ServeBatch.model_validate(batch.model_dump(mode="json"), context=BYTES_READ_LATER)
        item = wire.items[0]
    record = jobs.served_record(
        item, JobState.queued, model=unique("m"), version=3, queue="q", stamp=now(), message="w"
    )
    with session_scope() as s:
        stored = jobs.record_waiting(s, record).spec
    spec = PredictSpec.model_validate(stored)
    assert (spec.model_name, spec.version, spec.outputs) == (record["model_name"], 3, "tensor")
    got = spec.inputs.model_dump() if isinstance(spec.inputs, Tensor) else spec.inputs
    assert got == inputs
    assert spec.model_dump(mode="json") == stored == record["spec"]


def _state(job_id: str) -> JobState:
    with session_scope() as s:
        return job_reads.get_job(s, job_id).state


def test_a_served_prediction_is_born_ended_or_ends_its_waiting_record() -> None:
    born = _served(JobState.succeeded)
    waiting = _served(JobState.queued)
    with session_scope() as s:
        assert jobs.record_waiting(s, waiting).state is JobState.queued
        assert jobs.record_served(s, [born, {**waiting, **_ended(waiting)}]) == 2
    assert _state(born["id"]) is JobState.succeeded
    assert _state(waiting["id"]) is JobState.succeeded
    with session_scope() as s:
        kinds = [e.kind.value for e in job_reads.list_events(s, waiting["id"])]
    assert kinds == ["queued", "succeeded"]


def _ended(record: dict[str, Any]) -> dict[str, Any]:
    return {"state": JobState.succeeded, "attempts": 1, "finished_at": now()}


def test_a_served_record_leaves_a_job_that_moved_otherwise_alone() -> None:
    """A waiting prediction sent again as a job and claimed, or cancelled, is not the
    served record's to end."""
    claimed, cancelled = _served(JobState.queued), _served(JobState.queued)
    with session_scope() as s:
        jobs.record_waiting(s, claimed)
        jobs.record_waiting(s, cancelled)
        assert jobs.claim_job(s, claimed["id"], "other@host", 30) is not None
        jobs.request_cancel(s, cancelled["id"])
        late = [{**r, **_ended(r)} for r in (claimed, cancelled)]
        assert jobs.record_served(s, late) == 0
    assert _state(claimed["id"]) is JobState.running
    assert _state(cancelled["id"]) is JobState.cancelled


def test_the_served_edge_is_the_served_records_alone() -> None:
    with session_scope() as s:
        with pytest.raises(ValueError, match="born"):
            jobs.record_served(s, [_served(JobState.queued)])
        with pytest.raises(ValueError, match="born queued"):
            jobs.record_waiting(s, _served(JobState.succeeded))
    job_id = _new_job()
    with session_scope() as s:
        assert not jobs.finish_job(s, job_id, JobState.succeeded, message="no")
        assert jobs.transition(s, job_id, JobState.succeeded, served=True)


def test_a_message_never_changes_an_ended_job() -> None:
    job_id = _new_job()
    with session_scope() as s:
        jobs.request_cancel(s, job_id)
        jobs.set_message(s, job_id, "later")
        assert job_reads.get_job(s, job_id).message == "cancelled before it started"
