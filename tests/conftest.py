"""Real peers for every test: a Redis (TORCHQUEUE_TEST_REDIS_URL, else an embedded one),
a database (TORCHQUEUE_TEST_DATABASE_URL, a fresh PostgreSQL database made for this run,
else SQLite), and worker processes started the way an operator starts them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ops import embedded_redis
from shared import processes
from shared.db.session import dispose_engines
from tests.fleet import fleet  # noqa: F401  the fixture, for the tests that take it
from tests.helpers import (
    ADMIN_KEY,
    FLOWER_PASSWORD,
    fresh_database,
    reset_caches,
    start_process,
    wait_for_worker,
)


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
        # The webhook receivers of the tests listen on loopback, over plain http.
        "TORCHQUEUE_WEBHOOK_ALLOW_HTTP": "true",
        "TORCHQUEUE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "TORCHQUEUE_WEBHOOK_RETRY_SECONDS": "0.2",
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
        processes.stop(redis_proc, timeout=10)


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
    from shared.schemas import TrainRequest
    from shared.validation import resolve_train
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


@pytest.fixture(scope="session")
def worker(environment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CPU worker serving both queues, as `torchqueue worker --cpu` starts it."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    proc = start_process(["worker", "--cpu"], log)
    try:
        wait_for_worker("cpu@")
        yield log
    finally:
        processes.stop(proc)
