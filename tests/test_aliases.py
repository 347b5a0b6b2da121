"""Model aliases over HTTP, served by a real worker process: an alias is taken wherever a
version is, a moved alias serves the very next request, each move is in the history with
the key that made it, and only a key with ``models:write`` moves one. The command line
points and removes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from shared.db import keys
from shared.db.session import session_scope
from shared.processes import free_port
from tests.helpers import ADMIN_KEY, ROOT, unique, wait_job
from tests.test_import_rules import serving

pytestmark = pytest.mark.slow

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
ADMIN = ("bootstrap", "bootstrap key")  # who the session's admin key is (api.auth)


@pytest.fixture(scope="module")
def iris(worker: Path) -> str:
    """A model with two versions, each trained by the worker for two epochs."""
    from fastapi.testclient import TestClient

    name = unique("aliased")
    body = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": 2}}  # fmt: skip
    with TestClient(create_app(), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        for expected in (1, 2):
            job = wait_job(client, client.post("/v1/jobs/train", json=body).json()["id"])
            assert (job["state"], job["model_version"]) == ("succeeded", expected), job
    return name


def put(client: Any, name: str, alias: str, version: Any, **kwargs: Any) -> Any:
    return client.put(f"/v1/models/{name}/aliases/{alias}", json={"version": version}, **kwargs)


def predict(client: Any, name: str, version: str) -> Any:
    return client.post(
        f"/v1/models/{name}/predict", params={"version": version}, json={"inputs": ROWS}
    )


def test_a_moved_alias_serves_the_next_request(api_client: Any, iris: str) -> None:
    pointed = put(api_client, iris, "production", 1)
    assert pointed.status_code == 200, pointed.text
    assert pointed.json()["version"] == 1 and pointed.json()["updated_by"] == ADMIN[0]
    for _ in range(2):  # the second from the worker's cache of the version
        answer = predict(api_client, iris, "production")
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == 1
    assert put(api_client, iris, "production", 2).json()["version"] == 2
    answer = predict(api_client, iris, "production")  # the very next one
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == 2

    body = {"model_name": iris, "version": "production", "inputs": ROWS, "wait": 60}
    job = api_client.post("/v1/jobs/predict", json=body)
    assert job.status_code in (200, 201), job.text
    assert job.json()["state"] == "succeeded" and job.json()["model_version"] == 2
    assert job.json()["spec"]["version"] == 2  # resolved when it was submitted
    shown = api_client.get(f"/v1/models/{iris}/versions/production")
    assert shown.status_code == 200 and shown.json()["version"] == 2
    assert api_client.get(f"/v1/models/{iris}").json()["aliases"]["production"] == 2

    history = api_client.get(f"/v1/models/{iris}/alias-history", params={"alias": "production"})
    assert history.status_code == 200, history.text
    moves = [
        (e["from_version"], e["to_version"], e["by_key"], e["by_name"])
        for e in history.json()["items"]
    ]
    assert moves[:2] == [(1, 2, *ADMIN), (None, 1, *ADMIN)]
    assert all(e["at"] for e in history.json()["items"])


def test_an_unknown_alias_is_not_found_naming_version(api_client: Any, iris: str) -> None:
    answer = predict(api_client, iris, "nosuch")
    assert answer.status_code == 404, answer.text
    assert answer.json()["field"] == "version" and "nosuch" in answer.json()["detail"]
    body = {"model_name": iris, "version": "nosuch", "inputs": ROWS}
    job = api_client.post("/v1/jobs/predict", json=body)
    assert (job.status_code, job.json()["field"]) == (404, "version"), job.text
    version = api_client.get(f"/v1/models/{iris}/versions/nosuch")
    assert (version.status_code, version.json()["field"]) == (404, "version")
    # Nobody serves this pool: the API records the job itself, and refuses as the worker.
    waiting = api_client.post(
        f"/v1/models/{iris}/predict",
        params={"version": "nosuch"},
        json={"inputs": ROWS, "pool": "nobody", "timeout": 5},
    )
    assert (waiting.status_code, waiting.json()["field"]) == (404, "version"), waiting.text


def test_a_removed_alias_is_gone_from_the_next_request(api_client: Any, iris: str) -> None:
    assert put(api_client, iris, "staging", 1).status_code == 200
    assert predict(api_client, iris, "staging").json()["model_version"] == 1
    gone = api_client.delete(f"/v1/models/{iris}/aliases/staging")
    assert gone.status_code == 204, gone.text
    answer = predict(api_client, iris, "staging")
    assert (answer.status_code, answer.json()["field"]) == (404, "version")
    again = api_client.delete(f"/v1/models/{iris}/aliases/staging")
    assert (again.status_code, again.json()["field"]) == (404, "alias")
    assert "staging" not in api_client.get(f"/v1/models/{iris}").json()["aliases"]
    latest = api_client.get(f"/v1/models/{iris}/alias-history", params={"alias": "staging"})
    assert latest.json()["items"][0]["from_version"] == 1
    assert latest.json()["items"][0]["to_version"] is None


@pytest.mark.parametrize(
    ("alias", "version", "status", "field"),
    [
        ("latest", 1, 422, "alias"),
        ("Production", 1, 422, "alias"),
        ("a" * 33, 1, 422, "alias"),
        ("production", 9, 404, "version"),
        ("production", "nosuch", 404, "version"),
        ("production", 0, 422, "version"),
    ],
)
def test_a_refused_alias_names_its_field(
    api_client: Any, iris: str, alias: str, version: Any, status: int, field: str
) -> None:
    answer = put(api_client, iris, alias, version)
    assert (answer.status_code, answer.json().get("field")) == (status, field), answer.text


def test_an_unknown_model_is_not_found(api_client: Any) -> None:
    name = unique("nope")
    answer = put(api_client, name, "production", 1)
    assert (answer.status_code, answer.json()["field"]) == (404, "model_name")
    history = api_client.get(f"/v1/models/{name}/alias-history")
    assert history.status_code == 404


def test_only_a_key_with_models_write_moves_an_alias(api_client: Any, iris: str) -> None:
    with session_scope() as s:
        _, reader = keys.create_key(s, unique("reader"), ["models:read", "jobs:submit"])
    auth = {"Authorization": f"Bearer {reader}"}
    refused = put(api_client, iris, "best", 1, headers=auth)
    assert refused.status_code == 403 and "models:write" in refused.json()["detail"]
    removed = api_client.delete(f"/v1/models/{iris}/aliases/production", headers=auth)
    assert removed.status_code == 403
    # It may still read the history, and predict with an alias.
    assert api_client.get(f"/v1/models/{iris}/alias-history", headers=auth).status_code == 200
    assert put(api_client, iris, "best", 2).status_code == 200
    assert predict(api_client, iris, "best").json()["model_version"] == 2


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(
        ["api"], free_port(), "/healthz", tmp_path_factory.mktemp("aliases") / "api.log"
    ) as base:
        yield base


def tq(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "--api-url", api_url, *args],
        cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_command_line_points_and_removes_an_alias(api_url: str, iris: str) -> None:
    pointed = tq(api_url, "models", "alias", iris, "canary", "1")
    assert pointed.returncode == 0, pointed.stderr
    assert pointed.stdout.strip() == f"{iris}: alias canary → version 1"
    moved = tq(api_url, "models", "alias", iris, "canary", "latest")
    assert moved.stdout.strip() == f"{iris}: alias canary → version 2"
    shown = json.loads(tq(api_url, "models", "show", iris).stdout)
    assert shown["aliases"]["canary"] == 2
    version = json.loads(tq(api_url, "models", "show", iris, "--version", "canary").stdout)
    assert version["version"] == 2
    removed = tq(api_url, "models", "alias", iris, "canary", "--delete")
    assert removed.stdout.strip() == f"{iris}: alias canary removed"
    assert "canary" not in json.loads(tq(api_url, "models", "show", iris).stdout)["aliases"]
    refused = tq(api_url, "models", "alias", iris, "latest", "1")
    assert refused.returncode == 1 and "(field: alias)" in refused.stderr
    neither = tq(api_url, "models", "alias", iris, "canary")
    assert neither.returncode == 2 and "VERSION, or --delete" in neither.stderr
