"""Every log line names its process's role and, while a job runs, the job; as text or as
JSON (TORCHQUEUE_LOG_FORMAT)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest

from shared import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@logs.with_job_id
def _run(job_id: str, worker: str) -> None:
    logging.getLogger("workers.jobs").info("job %s claimed by %s", job_id, worker)


def test_text_lines_carry_the_role_and_the_job(
    restore_logging: None, capsys: pytest.CaptureFixture[str], setting: Callable[..., None]
) -> None:
    setting("TORCHQUEUE_LOG_FORMAT", "text")
    logs.configure("worker:train-cpu")
    logging.getLogger("celery.worker").info("ready")
    _run("6f1c", worker="cpu@host")
    first, second = capsys.readouterr().err.splitlines()
    assert " INFO worker:train-cpu celery.worker: ready" in first
    assert " INFO worker:train-cpu job=6f1c workers.jobs: job 6f1c claimed by cpu@host" in second


def test_json_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str], setting: Callable[..., None]
) -> None:
    setting("TORCHQUEUE_LOG_FORMAT", "json")
    logs.configure("api")
    logging.getLogger("uvicorn.error").warning("started", extra={"color_message": "\x1b[1m"})
    _run("6f1c", worker="cpu@host")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["role"] == "api" and first["level"] == "WARNING"
    assert first["logger"] == "uvicorn.error" and first["message"] == "started"
    assert first["job_id"] is None and "time" in first
    assert set(first) == {"time", "level", "role", "job_id", "logger", "message"}
    assert second["job_id"] == "6f1c" and second["message"] == "job 6f1c claimed by cpu@host"
