"""Every way in is checked: keys, scopes, owners, limits."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from api.app import create_app
from shared.auth import SCOPES
from shared.config import Settings
from shared.db import keys
from shared.db.models import ApiKey
from shared.db.session import session_scope
from tests.helpers import ROOT, unique

TRAIN = {"model_name": "auth", "family": "mlp", "dataset": {"builtin": "iris"}}
# The scopes each /v1 route needs; a route missing here fails the test below.
NEEDS: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/jobs/train"): {"jobs:submit", "models:write"},
    ("POST", "/v1/jobs/predict"): {"jobs:submit", "models:read"},
    ("GET", "/v1/jobs"): {"jobs:read"},
    ("GET", "/v1/jobs/{job_id}"): {"jobs:read"},
    ("GET", "/v1/jobs/{job_id}/events"): {"jobs:read"},
    ("GET", "/v1/jobs/{job_id}/output"): {"jobs:read"},
    ("POST", "/v1/jobs/{job_id}/cancel"): {"jobs:submit"},
    ("GET", "/v1/models"): {"models:read"},
    ("GET", "/v1/models/{name}"): {"models:read"},
    ("PATCH", "/v1/models/{name}"): {"models:read", "models:write"},
    ("POST", "/v1/models/{name}/predict"): {"jobs:submit", "models:read"},
    ("GET", "/v1/models/{name}/versions/{version}"): {"models:read"},
    ("PUT", "/v1/models/{name}/aliases/{alias}"): {"models:read", "models:write"},
    ("DELETE", "/v1/models/{name}/aliases/{alias}"): {"models:read", "models:write"},
    ("GET", "/v1/models/{name}/alias-history"): {"models:read"},
    ("GET", "/v1/families"): {"models:read"},
    ("GET", "/v1/builtin-datasets"): {"models:read"},
    ("GET", "/v1/workers"): {"jobs:read"},
    ("POST", "/v1/datasets"): {"datasets:write"},
    ("GET", "/v1/datasets"): {"datasets:read"},
    ("GET", "/v1/datasets/{name}"): {"datasets:read"},
    ("GET", "/v1/datasets/{name}/versions/{version}"): {"datasets:read"},
    ("DELETE", "/v1/datasets/{name}/versions/{version}"): {"datasets:write"},
    ("POST", "/v1/sweeps"): {"jobs:submit", "models:write"},
    ("GET", "/v1/sweeps"): {"jobs:read"},
    ("GET", "/v1/sweeps/{sweep_id}"): {"jobs:read"},
    ("POST", "/v1/sweeps/{sweep_id}/cancel"): {"jobs:submit"},
    ("GET", "/v1/pools/{pool}/backlog"): {"jobs:read"},
    ("POST", "/v1/webhooks"): {"jobs:submit"},
    ("GET", "/v1/webhooks"): {"jobs:read"},
    ("GET", "/v1/webhooks/{webhook_id}"): {"jobs:read"},
    ("DELETE", "/v1/webhooks/{webhook_id}"): {"jobs:submit"},
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): {"jobs:read"},
}


def _routes() -> list[tuple[str, str]]:
    """Every /v1 operation the API publishes."""
    paths = create_app().openapi()["paths"]
    return sorted(
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/v1")
        for method in ops
    )


def _key(*scopes: str) -> str:
    with session_scope() as s:
        _, key = keys.create_key(s, unique("test"), list(scopes))
    return key


def _as(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {"Authorization": ""}


def _call(client: Any, method: str, path: str, key: str | None) -> Any:
    url = path.format(job_id="0000", name="m", version="1", alias="production", sweep_id="0000",
                      pool="gpu", webhook_id="0000")  # fmt: skip
    body = {"model_name": "m", "inputs": ["x"]} if url.endswith("predict") else TRAIN
    return client.request(method, url, json=body if method == "POST" else None, headers=_as(key))


def test_every_v1_route_is_listed_here() -> None:
    assert set(_routes()) == set(NEEDS)


@pytest.mark.parametrize(("method", "path"), sorted(NEEDS))
def test_no_key_is_401_and_a_key_without_the_scope_is_403(
    api_client: Any, method: str, path: str
) -> None:
    for key in (None, "tq_000000000000_" + "x" * 43, "not a key at all"):
        response = _call(api_client, method, path, key)
        assert response.status_code == 401, (key, response.text)
        assert response.json()["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    for missing in NEEDS[(method, path)]:
        others = [s for s in SCOPES if s not in (missing, "admin")]
        response = _call(api_client, method, path, _key(*others))
        assert response.status_code == 403, response.text
        assert missing in response.json()["detail"]


def test_health_stays_open(api_client: Any) -> None:
    assert api_client.get("/healthz", headers=_as(None)).status_code == 200
    assert api_client.get("/readyz", headers=_as(None)).status_code == 200


def test_a_key_sees_and_cancels_only_its_own_jobs(api_client: Any) -> None:
    scopes = ("jobs:submit", "jobs:read", "models:read", "models:write")
    alice, bob = _key(*scopes), _key(*scopes)
    name = unique("owned")
    job = api_client.post(
        "/v1/jobs/train", json={**TRAIN, "model_name": name}, headers=_as(alice)
    ).json()
    assert job["submitted_by"] == alice.split("_")[1]
    for method, path in [
        ("GET", "/v1/jobs/{}"),
        ("GET", "/v1/jobs/{}/events"),
        ("POST", "/v1/jobs/{}/cancel"),
    ]:
        response = api_client.request(method, path.format(job["id"]), headers=_as(bob))
        assert response.status_code == 404, response.text
    listed = api_client.get("/v1/jobs", params={"model_name": name}, headers=_as(bob)).json()
    assert listed["total"] == 0
    mine = api_client.get("/v1/jobs", params={"model_name": name}, headers=_as(alice)).json()
    assert mine["total"] == 1
    assert api_client.get(f"/v1/jobs/{job['id']}").status_code == 200  # admin sees all
    # The same Idempotency-Key from two callers makes two jobs: keys are per caller.
    idem = {"Idempotency-Key": "same-key"}
    a = api_client.post("/v1/jobs/train", json=TRAIN, headers=_as(alice) | idem).json()
    b = api_client.post("/v1/jobs/train", json=TRAIN, headers=_as(bob) | idem).json()
    assert a["id"] != b["id"]
    longest = {"Idempotency-Key": "k" * 255}
    first = api_client.post("/v1/jobs/train", json=TRAIN, headers=_as(alice) | longest)
    again = api_client.post("/v1/jobs/train", json=TRAIN, headers=_as(alice) | longest)
    assert (first.status_code, again.status_code) == (201, 200)
    assert (
        api_client.post(
            "/v1/jobs/train", json=TRAIN, headers={"Idempotency-Key": "k" * 256}
        ).status_code
        == 422
    )
    cancelled = api_client.post(f"/v1/jobs/{a['id']}/cancel", headers=_as(alice)).json()
    assert cancelled["cancelled_by"] == alice.split("_")[1]


def test_a_revoked_key_stops_working_at_once(api_client: Any) -> None:
    key = _key("jobs:read")
    assert api_client.get("/v1/jobs", headers=_as(key)).status_code == 200
    with session_scope() as s:
        keys.revoke_key(s, key.split("_")[1])
    response = api_client.get("/v1/jobs", headers=_as(key))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_the_database_keeps_a_hash_not_the_key() -> None:
    key = _key("jobs:read")
    key_id, secret = key.split("_")[1], key.split("_", 2)[2]
    with session_scope() as s:
        row = s.scalars(sa.select(ApiKey).where(ApiKey.id == key_id)).one()
        stored = [str(getattr(row, c.name)) for c in ApiKey.__table__.columns]
    assert all(secret not in value for value in stored)
    assert row.secret_hash != secret and len(row.secret_hash) == 64


def test_placeholder_secrets_are_refused() -> None:
    for weak in ("short", "change-me-to-something-long"):
        with pytest.raises(ValidationError, match="placeholder"):
            Settings(bootstrap_key=weak)


def test_auth_off_is_open_and_warns(setting: Any, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    setting("TORCHQUEUE_AUTH", "off")
    with caplog.at_level(logging.WARNING), TestClient(create_app()) as client:
        assert client.get("/v1/jobs").status_code == 200
    assert "TORCHQUEUE_AUTH=off" in caplog.text


def test_an_oversized_body_is_413(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_MAX_REQUEST_MB", "0.01")
    rows = [[1.0] * 10 for _ in range(500)]
    body = {**TRAIN, "dataset": {"inline": {"inputs": rows, "labels": [0, 1] * 250}}}
    response = api_client.post("/v1/jobs/train", json=body)
    assert response.status_code == 413 and response.json()["type"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"model_name": "x", "inputs": ['
        for _ in range(2000):
            yield b'"abcdefgh", '
        yield b'"z"]}'

    streamed = api_client.post(
        "/v1/jobs/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_models_too_big_and_inputs_too_long_are_422(api_client: Any) -> None:
    huge = {**TRAIN, "params": {"hidden_sizes": [8192] * 16}}
    response = api_client.post("/v1/jobs/train", json=huge)
    assert response.status_code == 422 and response.json()["field"] == "params"
    assert "parameters" in response.json()["detail"]
    text = {"model_name": "m", "inputs": ["x" * 20_001]}
    assert api_client.post("/v1/jobs/predict", json=text).json()["field"] == "inputs[0]"
    many = {"model_name": "m", "inputs": ["x"] * 10_001}
    assert api_client.post("/v1/jobs/predict", json=many).json()["field"] == "inputs"


def test_keys_on_the_command_line() -> None:
    def tq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "keys", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = tq("create", "--name", "ci", "--scopes", "jobs:read,models:read")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tq_") and key not in made.stderr
    key_id = key.split("_")[1]
    assert key_id in tq("list").stdout and key not in tq("list").stdout
    assert tq("revoke", key_id).returncode == 0
    assert "revoked" in tq("list").stdout
    bad = tq("create", "--name", "x", "--scopes", "root")
    assert bad.returncode != 0 and "scopes are some of" in bad.stderr
