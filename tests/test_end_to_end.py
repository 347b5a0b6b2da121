"""HTTP → database → Redis → a real worker process → PyTorch → artifacts → registry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from shared.artifacts import sha256_hex
from shared.enqueue import send_job
from shared.schemas import JobOut
from tests.helpers import unique, wait_job

pytestmark = pytest.mark.slow

SEED_TEXTS = ["这是一个文本分类的例子。", "我非常喜欢这个课程。", "这是一个关于机器学习的文章。"]


def _train(client: Any, name: str, dataset: dict[str, Any], **kw: Any) -> dict[str, Any]:
    body = {"model_name": name, "family": "text_lstm", "dataset": dataset} | kw
    response = client.post("/v1/jobs/train", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    assert job["state"] == "queued" and job["kind"] == "train"
    return wait_job(client, job["id"])


def test_the_seed_example_trains_and_predicts(api_client: Any, worker: Path) -> None:
    name = unique("seed")
    inline = {"inputs": SEED_TEXTS, "labels": [0, 1, 0]}
    job = _train(api_client, name, {"inline": inline}, training={"epochs": 8})
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["worker"].startswith("cpu@")
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 8
    assert len(job["result"]["history"]) == 8
    assert job["model_version"] == 1

    version = api_client.get(f"/v1/models/{name}/versions/latest").json()
    assert version["version"] == 1 and version["job_id"] == job["id"]
    assert version["family"] == "text_lstm" and version["params"]["num_words"] == 1000
    weights = Path(urlparse(version["artifact_uri"]).path) / "model.safetensors"
    assert sha256_hex(weights.read_bytes()) == version["sha256"]

    response = api_client.post(
        "/v1/jobs/predict", json={"model_name": name, "inputs": ["这是一个新的文本。"], "wait": 60}
    )
    assert response.status_code == 200, response.text
    prediction = response.json()
    assert prediction["state"] == "succeeded" and prediction["model_version"] == 1
    [out] = prediction["result"]["outputs"]
    assert out["label"] in (0, 1)
    assert set(out["probabilities"]) == {"0", "1"}
    assert all(0.0 <= p <= 1.0 for p in out["probabilities"].values())
    assert sum(out["probabilities"].values()) == pytest.approx(1.0)


def test_a_second_training_makes_version_two(api_client: Any, worker: Path) -> None:
    name = unique("iris")
    train = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"}}
    for expected in (1, 2):
        job = wait_job(api_client, api_client.post("/v1/jobs/train", json=train).json()["id"])
        assert job["model_version"] == expected
    model = api_client.get(f"/v1/models/{name}").json()
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["latest_version"] == 2
    listed = api_client.get("/v1/models", params={"limit": 500}).json()
    assert name in {m["name"] for m in listed["items"]}

    # Without `wait`: 201 and a job to poll; an explicit version is honoured.
    body = {"model_name": name, "version": 1, "inputs": [[5.1, 3.5, 1.4, 0.2]]}
    response = api_client.post("/v1/jobs/predict", json=body)
    assert response.status_code == 201
    done = wait_job(api_client, response.json()["id"])
    assert done["model_version"] == 1
    assert done["result"]["outputs"][0]["label"] == "setosa"
    # A wait that runs out answers 202 with the job to poll: here the prediction waits
    # behind a training on the session's only worker.
    long = {
        "model_name": unique("long"),
        "family": "text_lstm",
        "dataset": {"builtin": "sentiment"},
        "training": {"epochs": 500, "batch_size": 2},
    }
    blocker = api_client.post("/v1/jobs/train", json=long).json()
    while api_client.get(f"/v1/jobs/{blocker['id']}").json()["state"] != "running":
        time.sleep(0.05)
    response = api_client.post("/v1/jobs/predict", json=body | {"wait": 0.5})
    assert response.status_code == 202
    assert response.json()["state"] == "queued"
    api_client.post(f"/v1/jobs/{blocker['id']}/cancel")
    assert wait_job(api_client, response.json()["id"])["state"] == "succeeded"
    bad = {"model_name": name, "inputs": [[1.0, 2.0]]}
    response = api_client.post("/v1/jobs/predict", json=bad)
    assert response.status_code == 422 and response.json()["field"] == "inputs[0]"

    page = api_client.get("/v1/jobs", params={"model_name": name, "kind": "train", "limit": 1})
    assert page.json()["total"] == 2 and len(page.json()["items"]) == 1


def test_a_diverging_job_fails_with_its_reason(api_client: Any, worker: Path) -> None:
    rows = [[float(i % 7), float(i % 5) - 2.0, float(i % 3)] for i in range(64)]
    inline = {"inputs": rows, "labels": [r[0] * 3.5 + 0.25 for r in rows]}
    body = {
        "model_name": unique("nan"),
        "family": "mlp",
        "params": {"task": "regression"},
        "dataset": {"inline": inline},
        "training": {"epochs": 20, "learning_rate": 10, "optimizer": "sgd", "momentum": 0.9},
    }
    job = wait_job(api_client, api_client.post("/v1/jobs/train", json=body).json()["id"])
    assert job["state"] == "failed"
    assert job["error"]["type"] == "nan_loss"
    assert "learning rate" in job["error"]["detail"]
    assert job["model_version"] is None


def test_a_redelivered_message_does_nothing(api_client: Any, worker: Path) -> None:
    body = {"model_name": unique("dup"), "family": "mlp", "dataset": {"builtin": "iris"}}
    job = wait_job(api_client, api_client.post("/v1/jobs/train", json=body).json()["id"])
    send_job(JobOut.model_validate(job))  # the same message again
    deadline = time.monotonic() + 30
    while f"job {job['id']} is not queued" not in worker.read_text():
        assert time.monotonic() < deadline, "the duplicate was never consumed"
        time.sleep(0.2)
    again = api_client.get(f"/v1/jobs/{job['id']}").json()
    assert again == job
    versions = api_client.get(f"/v1/models/{job['model_name']}").json()["versions"]
    assert len(versions) == 1


def test_a_tampered_model_is_refused_by_the_worker(api_client: Any, worker: Path) -> None:
    name = unique("tamper")
    job = _train(api_client, name, {"inline": {"inputs": SEED_TEXTS, "labels": [0, 1, 0]}})
    version = api_client.get(f"/v1/models/{name}/versions/1").json()
    weights = Path(urlparse(version["artifact_uri"]).path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    body = {"model_name": name, "inputs": ["好"], "wait": 60}
    prediction = api_client.post("/v1/jobs/predict", json=body).json()
    assert job["state"] == "succeeded"
    assert prediction["state"] == "failed"
    assert prediction["error"]["type"] == "model_load_error"
    assert "checksum mismatch" in prediction["error"]["detail"]
