from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.db import store
from shared.db.session import session_scope
from shared.jobstate import ALLOWED_FROM, TERMINAL, JobKind, JobState, transition
from tests.helpers import unique


def _new_job() -> str:
    with session_scope() as s:
        job = store.create_job(
            s, kind=JobKind.train, model_name=unique("m"), spec={}, queue="train"
        )
    return job.id


def test_a_queued_job_is_claimed_once_however_many_workers_race() -> None:
    job_id = _new_job()

    def claim(i: int) -> bool:
        with session_scope() as s:
            return store.claim_job(s, job_id, f"w{i}@host", 30) is not None

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(claim, range(8)))
    assert wins.count(True) == 1
    with session_scope() as s:
        job = store.get_job(s, job_id)
    assert job.state is JobState.running
    assert job.attempts == 1
    assert job.started_at is not None and job.started_at.tzinfo is not None


def test_a_finished_job_never_moves_again() -> None:
    job_id = _new_job()
    with session_scope() as s:
        assert store.claim_job(s, job_id, "w@host", 30) is not None
        assert store.finish_job(s, job_id, JobState.succeeded, result={"ok": True}, message="ok")
    for to in JobState:
        with session_scope() as s:
            assert not transition(s, job_id, to)
    with session_scope() as s:
        job = store.get_job(s, job_id)
    assert job.state is JobState.succeeded
    assert job.result == {"ok": True}
    assert job.finished_at is not None


def test_a_queued_job_cannot_succeed_without_being_claimed() -> None:
    job_id = _new_job()
    with session_scope() as s:
        assert not store.finish_job(s, job_id, JobState.succeeded, message="no")
        assert store.get_job(s, job_id).state is JobState.queued


def test_terminal_states_have_no_way_out() -> None:
    for sources in ALLOWED_FROM.values():
        assert not sources & TERMINAL
    assert {s for s in JobState if s.is_terminal()} == TERMINAL


def test_an_impossible_narrowing_is_refused() -> None:
    with session_scope() as s, pytest.raises(ValueError, match="no transition"):
        transition(s, "x", JobState.running, only_from=frozenset({JobState.failed}))
