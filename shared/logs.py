"""How every process logs: one handler on the root logger, to standard error, each line
carrying the process's role (``api``, ``worker:train-cpu``, ``reaper``, …) and, while a
job runs, the job's id. ``TORCHQUEUE_LOG_FORMAT=json`` writes one JSON object a line
(python-json-logger), for log shippers; the default is one line of text:

    2026-12-02 14:24:38,963 INFO worker:train-cpu job=6f1c… workers.jobs: job 6f1c… succeeded

The API, the workers, the reaper and Flower call ``configure`` once as they start; the
libraries' own loggers (uvicorn, Celery, tornado) then go through the same handler.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

TEXT_FORMAT = "%(asctime)s %(levelname)s %(role)s %(job)s%(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(role)s %(job_id)s %(name)s %(message)s"

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
P = ParamSpec("P")
R = TypeVar("R")


class _Context(logging.Filter):
    """Puts the role and the current job's id on every record."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _job_id.get()
        record.role = self.role
        record.job_id = job_id
        record.job = f"job={job_id} " if job_id else ""
        return True


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``kind``: ``text`` or ``json``."""
    if kind == "json":
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # The text format's job column, and uvicorn's coloured copy of its message.
            reserved_attrs=[*RESERVED_ATTRS, "job", "color_message"],
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(role: str, level: int | str = logging.INFO) -> None:
    """Send every log record of this process to standard error, marked with ``role``;
    replaces the handlers already on the root logger."""
    from shared.config import get_settings

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(get_settings().log_format))
    handler.addFilter(_Context(role))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Log lines written in this block (in this thread) carry ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def with_job_id(run: Callable[P, R]) -> Callable[P, R]:
    """Run a function whose first argument is a job id with that id on its log lines."""

    @functools.wraps(run)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        job_id = args[0] if args else kwargs.get("job_id")
        with job_context(str(job_id)):
            return run(*args, **kwargs)

    return wrapper
