from __future__ import annotations

from typing import Any

from shared.processes import free_port
from tests.helpers import unique


def test_healthz_and_readyz(api_client: Any) -> None:
    assert api_client.get("/healthz").json() == {"status": "ok", "instance": None}
    ready = api_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok" and ready.json()["redis"] == "ok"


def test_readyz_says_when_redis_is_down(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    response = api_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("unreachable")
    assert response.json()["database"] == "ok"
    assert "redis" in response.json()["detail"]


def test_readyz_says_when_the_database_is_down(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_DATABASE_URL", f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x")
    response = api_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["database"].startswith("unreachable")
    assert response.json()["redis"] == "ok"


def test_a_job_submitted_while_redis_is_down_is_kept(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    body = {"model_name": unique("down"), "family": "mlp", "dataset": {"builtin": "iris"}}
    response = api_client.post("/v1/jobs/train", json=body)
    assert response.status_code == 201
    job = response.json()
    assert job["state"] == "queued"
    assert "waiting to be sent" in job["message"] and "broker" in job["message"]
    assert api_client.get(f"/v1/jobs/{job['id']}").json()["message"] == job["message"]


def test_routes_answer_503_while_the_database_is_down(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_DATABASE_URL", f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x")
    for path in ("/v1/jobs", "/v1/models", "/v1/workers"):
        response = api_client.get(path)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["type"] == "unavailable"
    scoped = {"Authorization": "Bearer tq_000000000000_" + "x" * 43}  # checked in the database
    assert api_client.get("/v1/jobs", headers=scoped).status_code == 503
