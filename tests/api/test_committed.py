"""An answer means committed: every route that writes commits before it answers. A real
API process reaches PostgreSQL through a proxy that drops the connection at a COMMIT: the
route answers 503 with the usual error body, writes nothing, logs no traceback, and the
client's connection still answers. Without a fault, a read on a fresh connection right
after each answer sees the write."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from api.app import create_app
from shared.config import get_settings
from shared.db import aliases, datasets, jobs, model_registry, sweeps, webhooks
from shared.db.models import (
    DatasetVersion,
    Job,
    ModelAlias,
    RegisteredModel,
    Sweep,
    Webhook,
)
from shared.db.session import session_scope
from shared.jobstate import JobKind
from shared.processes import free_port
from shared.processes import stop as stop_process
from tests.dbproxy import Proxy
from tests.helpers import ADMIN_KEY, start_process, unique, wait_listening

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("TORCHQUEUE_TEST_DATABASE_URL"),
        reason="needs PostgreSQL (TORCHQUEUE_TEST_DATABASE_URL): a TCP proxy cuts its connections",
    ),
]

FEATURES = {"kind": "features", "n_features": 4}
ROW = [5.1, 3.5, 1.4, 0.2]


class KeepAlive:
    """One HTTP/1.1 connection, kept open across requests, so that a test sees whether
    the server still answers on it after a fault."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``body``: JSON, or bytes sent as a CSV file."""
        if isinstance(body, bytes):
            data, content_type = body, "text/csv"
        else:
            data = b"" if body is None else json.dumps(body).encode()
            content_type = "application/json"
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + data)
        status_line = self.reader.readline()
        if not status_line:
            raise ConnectionError(f"the server closed the connection on {method} {path}")
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = self.reader.read(length) if length else b""
        return int(status_line.split()[1]), json.loads(payload) if payload else None

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class Api:
    port: int
    proxy: Proxy
    log: Path

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """`torchqueue api` on a free port, its database reached through the proxy."""
    proxy = Proxy(get_settings().db_url)
    port, log = free_port(), tmp_path / "api.log"
    proc = start_process(
        ["api", "--port", str(port)], log, {"TORCHQUEUE_DATABASE_URL": proxy.proxied_url}
    )
    try:
        wait_listening(port, proc, log)
        yield Api(port, proxy, log)
    finally:
        stop_process(proc)
        proxy.close()


def _fresh_read(query: Callable[[sa.Connection], Any]) -> Any:
    """Read on a connection opened for this read alone."""
    engine = sa.create_engine(get_settings().db_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return query(conn)
    finally:
        engine.dispose()


def _model() -> str:
    """A model with one version (its artifact is never read by these tests)."""
    name = unique("committed")
    with session_scope() as s:
        job = jobs.create_job(
            s, kind=JobKind.train, model_name=name, spec={}, queue="train.default.d1.m0"
        )
        model_registry.register_model_version(
            s, model_name=name, family="mlp", params={}, input_schema=FEATURES, metrics={},
            artifact_uri="file:///nowhere", sha256="0" * 64, job_id=job.id,
        )  # fmt: skip
    return name


def _queued_job() -> str:
    with session_scope() as s:
        job = jobs.create_job(
            s, kind=JobKind.train, model_name=unique("cancel"), spec={}, queue="train.none"
        )
    return job.id


def _jobs_of(model: str) -> Callable[[sa.Connection], int]:
    return lambda c: int(
        c.execute(sa.select(sa.func.count()).where(Job.model_name == model)).scalar() or 0
    )


def _state_of(job_id: str) -> Callable[[sa.Connection], str]:
    return lambda c: str(c.execute(sa.select(Job.state).where(Job.id == job_id)).scalar())


def _batch_size_of(model: str) -> Callable[[sa.Connection], Any]:
    return lambda c: c.execute(
        sa.select(RegisteredModel.max_batch_size).where(RegisteredModel.name == model)
    ).scalar()


@dataclass
class Write:
    """A request that writes, with what the database holds before and after it."""

    method: str
    path: str
    body: Any
    read: Callable[[sa.Connection], Any]
    before: Any
    after: Any


def _train() -> Write:
    name = unique("train")
    body = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"},
            "resources": {"pool": "nobody"}}  # fmt: skip
    return Write("POST", "/v1/jobs/train", body, _jobs_of(name), 0, 1)


def _predict_job() -> Write:
    name = _model()
    body = {"model_name": name, "inputs": [ROW], "resources": {"pool": "nobody"}}
    return Write("POST", "/v1/jobs/predict", body, _jobs_of(name), 1, 2)


def _cancel() -> Write:
    job_id = _queued_job()
    return Write("POST", f"/v1/jobs/{job_id}/cancel", None, _state_of(job_id), "queued",
                 "cancelled")  # fmt: skip


def _batching() -> Write:
    name = _model()
    return Write("PATCH", f"/v1/models/{name}", {"max_batch_size": 7}, _batch_size_of(name),
                 None, 7)  # fmt: skip


def _alias_of(model: str) -> Callable[[sa.Connection], Any]:
    return lambda c: c.execute(
        sa.select(ModelAlias.version).where(
            ModelAlias.model_name == model, ModelAlias.alias == "production"
        )
    ).scalar()


def _point_alias() -> Write:
    name = _model()
    return Write("PUT", f"/v1/models/{name}/aliases/production", {"version": 1},
                 _alias_of(name), None, 1)  # fmt: skip


def _remove_alias() -> Write:
    name = _model()
    with session_scope() as s:
        aliases.point(s, name, "production", 1, "test", "test")
    return Write("DELETE", f"/v1/models/{name}/aliases/production", None, _alias_of(name), 1,
                 None)  # fmt: skip


def _sync_predict() -> Write:
    """Nobody serves the pool: the answer is 202 with the job recorded as queued."""
    name = _model()
    body = {"inputs": [ROW], "pool": "nobody", "timeout": 5}
    return Write("POST", f"/v1/models/{name}/predict", body, _jobs_of(name), 1, 2)


def _versions_of(name: str) -> Callable[[sa.Connection], int]:
    return lambda c: int(
        c.execute(sa.select(sa.func.count()).where(DatasetVersion.dataset_name == name)).scalar()
        or 0
    )


def _upload() -> Write:
    name = unique("upload")
    body = b"a,label\n1.5,x\n2.5,y\n"
    return Write("POST", f"/v1/datasets?name={name}", body, _versions_of(name), 0, 1)


def _delete_version() -> Write:
    name = unique("delete")
    with session_scope() as s:
        datasets.create_version(
            s, name=name, source="upload", format="parquet", uri="file:///nowhere.parquet",
            created_by=None, admin=True,
        )  # fmt: skip
    return Write("DELETE", f"/v1/datasets/{name}/versions/1", None, _versions_of(name), 1, 0)


def _sweeps_of(model: str) -> Callable[[sa.Connection], int]:
    return lambda c: int(
        c.execute(sa.select(sa.func.count()).where(Sweep.model_name == model)).scalar() or 0
    )


def _sweep() -> Write:
    name = unique("sweep")
    base = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"},
            "resources": {"pool": "nobody"}}  # fmt: skip
    space = {"params.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}
    body = {"base": base, "space": space, "trials": 3, "parallel": 2}
    return Write("POST", "/v1/sweeps", body, _sweeps_of(name), 0, 1)


def _cancel_sweep() -> Write:
    with session_scope() as s:
        sweep_id = sweeps.create_sweep(s, spec={}, model_name=unique("sweep"), submitted_by=None)

    def state(c: sa.Connection) -> str:
        return str(c.execute(sa.select(Sweep.state).where(Sweep.id == sweep_id)).scalar())

    return Write("POST", f"/v1/sweeps/{sweep_id}/cancel", None, state, "running", "cancelled")


def _webhooks_to(url: str) -> Callable[[sa.Connection], int]:
    return lambda c: int(
        c.execute(sa.select(sa.func.count()).where(Webhook.url == url)).scalar() or 0
    )


def _subscribe() -> Write:
    url = f"http://127.0.0.1:9/{unique('hook')}"
    body = {"url": url, "events": ["job.succeeded"]}
    return Write("POST", "/v1/webhooks", body, _webhooks_to(url), 0, 1)


def _unsubscribe() -> Write:
    url = f"http://127.0.0.1:9/{unique('hook')}"
    with session_scope() as s:
        made, _ = webhooks.create(s, url=url, events=["job.failed"], owner=None,
                                  owner_is_admin=True)  # fmt: skip
    return Write("DELETE", f"/v1/webhooks/{made.id}", None, _webhooks_to(url), 1, 0)


WRITES: dict[tuple[str, str], Callable[[], Write]] = {
    ("POST", "/v1/webhooks"): _subscribe,
    ("DELETE", "/v1/webhooks/{webhook_id}"): _unsubscribe,
    ("POST", "/v1/sweeps"): _sweep,
    ("POST", "/v1/sweeps/{sweep_id}/cancel"): _cancel_sweep,
    ("POST", "/v1/datasets"): _upload,
    ("DELETE", "/v1/datasets/{name}/versions/{version}"): _delete_version,
    ("POST", "/v1/jobs/train"): _train,
    ("POST", "/v1/jobs/predict"): _predict_job,
    ("POST", "/v1/jobs/{job_id}/cancel"): _cancel,
    ("PATCH", "/v1/models/{name}"): _batching,
    ("PUT", "/v1/models/{name}/aliases/{alias}"): _point_alias,
    ("DELETE", "/v1/models/{name}/aliases/{alias}"): _remove_alias,
    ("POST", "/v1/models/{name}/predict"): _sync_predict,
}


def test_every_writing_route_is_listed_here() -> None:
    paths = create_app().openapi()["paths"]
    writing = {
        (method.upper(), path)
        for path, ops in paths.items()
        for method in ops
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    }
    assert writing == set(WRITES)


def test_a_commit_cut_answers_503_writes_nothing_and_keeps_the_connection(api: Api) -> None:
    client = KeepAlive(api.port)
    try:
        for (method, _), prepare in sorted(WRITES.items()):
            write = prepare()
            api.proxy.cut_at(b"COMMIT")
            status, body = client.request(write.method, write.path, write.body)
            assert not api.proxy.armed, f"{method} {write.path} committed nothing"
            assert status == 503, (write.path, status, body)
            assert body["type"] == "unavailable" and body["detail"], body
            assert _fresh_read(write.read) == write.before, write.path
            # The same connection answers the next request.
            assert client.request("GET", "/v1/jobs?limit=1")[0] == 200
    finally:
        client.close()
    log = api.text()
    assert "Traceback" not in log and "response already started" not in log, log
    assert api.proxy.cuts == len(WRITES)


def test_a_read_on_a_fresh_connection_sees_every_answered_write(api: Api) -> None:
    client = KeepAlive(api.port)
    try:
        for _ in range(10):
            for prepare in WRITES.values():
                write = prepare()
                status, body = client.request(write.method, write.path, write.body)
                assert status in (200, 201, 202, 204), (write.path, status, body)
                assert _fresh_read(write.read) == write.after, (write.path, body)
    finally:
        client.close()
