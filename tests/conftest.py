"""Real peers for every test: a Redis (TORCHQUEUE_TEST_REDIS_URL, else an embedded one),
a database (TORCHQUEUE_TEST_DATABASE_URL, a fresh PostgreSQL database made for this run,
else SQLite), and worker processes started the way an operator starts them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from ops import embedded_redis
from shared.celery_app import get_celery
from shared.config import get_settings
from shared.db.session import dispose_engines, get_engine

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = secrets.token_urlsafe(32)
FLOWER_PASSWORD = secrets.token_urlsafe(18)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _fresh_postgres(url: str) -> tuple[str, str]:
    """A new database beside the given one, so that runs never see each other's rows."""
    name = f"tq_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False), name


def _drop_postgres(url: str, name: str) -> None:
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
        url, name = _fresh_postgres(admin)
    else:
        url = f"sqlite:///{directory / f'torchqueue-{uuid.uuid4().hex[:8]}.db'}"
    upgrade(url)

    def remove() -> None:
        get_engine(url).dispose()
        if admin:
            _drop_postgres(admin, name)

    return url, remove


def reset_caches() -> None:
    get_settings.cache_clear()
    get_celery.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One home, one database and one Redis for the session, in the environment that the
    tests, the in-process API and every started worker share."""
    home = tmp_path_factory.mktemp("home")
    redis_proc = None
    redis_url = os.environ.get("TORCHQUEUE_TEST_REDIS_URL")
    if not redis_url:
        redis_proc, redis_url = embedded_redis.start(home / "redis")
    redis.Redis.from_url(redis_url).flushdb()
    db_url, remove_database = fresh_database(home)
    env = {
        "TORCHQUEUE_HOME": str(home),
        "TORCHQUEUE_REDIS_URL": redis_url,
        "TORCHQUEUE_DATABASE_URL": db_url,
        "TORCHQUEUE_ARTIFACTS_URL": str(home / "artifacts"),
        "TORCHQUEUE_PROGRESS_INTERVAL_SECONDS": "0",
        "TORCHQUEUE_TORCH_THREADS": "1",
        # An admin key for the tests, the API processes they start and the command line.
        "TORCHQUEUE_BOOTSTRAP_KEY": ADMIN_KEY,
        "TORCHQUEUE_API_KEY": ADMIN_KEY,
        "TORCHQUEUE_FLOWER_USER": "flower",
        "TORCHQUEUE_FLOWER_PASSWORD": FLOWER_PASSWORD,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_caches()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_caches()
    remove_database()
    dispose_engines()
    if redis_proc is not None:
        redis_proc.terminate()
        redis_proc.wait(10)


@pytest.fixture
def api_client() -> Iterator[Any]:
    """The app in process, over HTTP semantics, against the session's database and Redis."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(
        create_app(),
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
        yield client


@pytest.fixture(scope="session")
def trained() -> Any:
    """A tiny text_lstm, trained for two epochs on two sentences."""
    from shared.schemas import TrainRequest, resolve_train
    from workers.training import train

    body = {
        "model_name": "tiny",
        "family": "text_lstm",
        "dataset": {"inline": {"inputs": ["good film", "bad film"], "labels": [1, 0]}},
        "training": {"epochs": 2},
    }
    return train(resolve_train(TrainRequest.model_validate(body)))


@pytest.fixture
def setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Change one setting for a test, through the environment, as a process would see it."""

    def put(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        reset_caches()

    yield put
    monkeypatch.undo()
    reset_caches()
    assert os.environ.get("TORCHQUEUE_REDIS_URL")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Any:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(proc: Any, timeout: float = 15) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_worker(name_prefix: str, timeout: float = 60) -> None:
    """Until a worker whose name starts with ``name_prefix`` answers a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = get_celery().control.ping(timeout=0.5) or []
        if any(name.startswith(name_prefix) for reply in replies for name in reply):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no worker {name_prefix}* answered within {timeout} s")


@pytest.fixture(scope="session")
def worker(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CPU worker serving both queues, as `torchqueue worker --cpu` starts it."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    proc = start_process(["worker", "--cpu"], log)
    try:
        wait_for_worker("cpu@")
        yield log
    finally:
        stop_process(proc)


def wait_job(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not finish within {timeout} s")


# Worker fleets for one test each (imported last: the module uses the helpers above).
from tests.fleet import fleet  # noqa: E402, F401
