"""What the tests share besides fixtures: the session's credentials, fresh databases,
processes started the way an operator starts them, and waiting for workers and jobs.
A plain module: ``conftest.py``, ``fleet.py`` and the tests import it, it imports none
of them."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from api.client import Client
from shared import processes
from shared.celery_app import get_celery
from shared.config import get_settings
from shared.db.session import get_engine
from shared.jobstate import TERMINAL

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = secrets.token_urlsafe(32)
FLOWER_PASSWORD = secrets.token_urlsafe(18)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def fresh_postgres(url: str) -> tuple[str, str]:
    """A new database beside the given one, so that runs never see each other's rows."""
    name = f"tq_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False), name


def drop_postgres(url: str, name: str) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fresh_database(directory: Path) -> tuple[str, Callable[[], None]]:
    """A new database at the latest schema, and what removes it: a PostgreSQL database
    beside TORCHQUEUE_TEST_DATABASE_URL when that is set, else a SQLite file."""
    from shared.db.migrate import upgrade

    admin = os.environ.get("TORCHQUEUE_TEST_DATABASE_URL")
    if admin:
        url, name = fresh_postgres(admin)
    else:
        url = f"sqlite:///{directory / f'torchqueue-{uuid.uuid4().hex[:8]}.db'}"
    upgrade(url)

    def remove() -> None:
        get_engine(url).dispose()
        if admin:
            drop_postgres(admin, name)

    return url, remove


def reset_caches() -> None:
    get_settings.cache_clear()
    get_celery.cache_clear()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    """``torchqueue ARGV`` in a process group of its own, its output appended to ``log``;
    ``shared.processes.stop`` stops it."""
    return processes.spawn(
        [sys.executable, "-m", "ops.cli", *argv],
        log=log,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def wait_listening(port: int, proc: Any, log: Path, timeout: float = 60) -> None:
    """Until ``proc`` (a server started by ``start_process``) accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def wait_for_worker(name_prefix: str, timeout: float = 60) -> None:
    """Until a worker whose name starts with ``name_prefix`` answers a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = get_celery().control.ping(timeout=0.5) or []
        if any(name.startswith(name_prefix) for reply in replies for name in reply):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no worker {name_prefix}* answered within {timeout} s")


def wait_job(
    client: Any,
    job_id: str,
    timeout: float = 120,
    *,
    until: Collection[str] = TERMINAL,
    attempts: int = 0,
    poll: float = 0.1,
) -> dict[str, Any]:
    """Until the job is in one of ``until`` after at least ``attempts`` claims, through
    ``api.client.Client.wait`` over ``client`` (the app's test client, or an httpx client
    of a running API); TimeoutError when it is not within ``timeout`` seconds, or ends
    elsewhere."""

    def reached(job: dict[str, Any]) -> bool:
        return job["state"] in until and job["attempts"] >= attempts

    job = Client(http=client).wait(job_id, timeout=timeout, poll=poll, until=reached)
    if not reached(job):
        raise TimeoutError(
            f"job {job_id} is {job['state']} after {job['attempts']} attempts, "
            f"not in {until} with {attempts} or more, within {timeout} s"
        )
    return job


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
