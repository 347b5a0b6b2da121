"""A failed job keeps the error tree's shape, ``{"type", "detail"}``, as its ``error``: jobs
run by ``workers.jobs`` in this process, without Celery; failures mapped by class."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

from shared.db import job_reads, jobs
from shared.db.session import session_scope
from shared.errors import BadData, JobCrashed, OutOfMemory, Unavailable
from shared.jobstate import JobKind, JobState
from shared.schemas import JobOut, TrainRequest
from shared.validation import resolve_train
from tests.helpers import unique
from workers import jobs as worker_jobs


def _run(spec: dict[str, Any]) -> JobOut:
    """A training job recorded with ``spec`` (and never sent), run here to its end."""
    with session_scope() as s:
        job = jobs.create_job(s, kind=JobKind.train, model_name="m", spec=spec, queue="t")
    worker_jobs.run_train_job(job.id, worker=unique("test-worker"))
    with session_scope() as s:
        return job_reads.get_job(s, job.id)


def _spec(dataset: dict[str, Any], params: Any = None, **training: Any) -> dict[str, Any]:
    body = {"model_name": unique("m"), "family": "mlp", "params": params or {},
            "dataset": dataset, "training": training}  # fmt: skip
    return resolve_train(TrainRequest.model_validate(body)).model_dump(mode="json")


def test_a_diverging_job_fails_with_nan_loss_in_the_one_shape() -> None:
    # The data and settings of tests/workers/test_training.py's diverging loss.
    rng = random.Random(0)
    rows = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(64)]
    inline = {"inputs": rows, "labels": [r[0] * 3.5 + 0.25 for r in rows]}
    spec = _spec({"inline": inline}, {"task": "regression"}, epochs=20, learning_rate=10.0,
                 optimizer="sgd", momentum=0.9)  # fmt: skip
    job = _run(spec)
    assert job.state is JobState.failed
    assert job.error is not None and set(job.error) == {"type", "detail"}
    assert job.error["type"] == "nan_loss" and "learning rate" in job.error["detail"]
    assert job.message == job.error["detail"]


def test_a_job_on_bad_data_fails_with_bad_data_in_the_one_shape() -> None:
    # One class only: the API refuses it (422), so the row is written as a stale or
    # hand-made spec would be, and the worker finds it out.
    spec = _spec({"inline": {"inputs": [[1.0, 2.0], [3.0, 4.0]], "labels": [0, 1]}}, epochs=2)
    spec["dataset"]["inline"]["labels"] = [0, 0]
    job = _run(spec)
    assert job.state is JobState.failed
    assert job.error == {"type": "bad_data", "detail": "classification needs at least two classes"}


def test_a_job_error_keeps_its_field() -> None:
    error = worker_jobs.error_of(BadData("not a number", field="dataset.inline.labels[2]"))
    assert error.to_dict() == {
        "type": "bad_data",
        "detail": "not a number",
        "field": "dataset.inline.labels[2]",
    }


def test_out_of_memory_is_matched_by_class() -> None:
    # Not the words: a CUDA out-of-memory message would read the same on any class.
    error = worker_jobs.error_of(torch.OutOfMemoryError("Tried to allocate 2.00 GiB"))
    assert isinstance(error, OutOfMemory)
    assert error.to_dict() == {
        "type": "out_of_memory",
        "detail": "Tried to allocate 2.00 GiB; use a smaller batch or model",
    }
    assert isinstance(worker_jobs.error_of(MemoryError()), OutOfMemory)


def test_the_cpu_allocators_failure_is_out_of_memory() -> None:
    """It has no class of its own: a RuntimeError, known by its words."""
    with pytest.raises(RuntimeError) as raised:
        torch.empty(2**62, dtype=torch.uint8)
    assert isinstance(worker_jobs.error_of(raised.value), OutOfMemory)


def test_anything_else_is_internal_error_naming_the_exception() -> None:
    error = worker_jobs.error_of(KeyError("hidden_sizes"))
    assert isinstance(error, JobCrashed)
    assert error.to_dict() == {"type": "internal_error", "detail": "KeyError: 'hidden_sizes'"}
    assert isinstance(worker_jobs.error_of(ValueError("out of memory")), JobCrashed)


def test_a_job_that_cannot_be_claimed_is_unavailable(setting: Callable[[str, str], None]) -> None:
    """The tasks retry it later (``workers.tasks``): not the job's fault."""
    setting("TORCHQUEUE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(Unavailable, match="the database cannot be reached"):
        worker_jobs.run_train_job("a-job", worker="test-worker")
