"""Sync predictions, ``POST /v1/models/{name}/predict``: batched in the API, run by a real
worker process, answered over Redis, recorded in the database."""

from __future__ import annotations

import base64
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from api.batcher import SERVED_TTL_SECONDS
from shared.artifacts import open_store
from shared.celery_app import get_celery
from shared.constants import TASK_SERVE
from shared.db import jobs, model_registry
from shared.db.session import session_scope
from shared.jobstate import JobKind
from shared.processes import stop as stop_process
from shared.routing import predict_queue
from shared.schemas import TrainRequest
from shared.validation import resolve_train
from tests.fleet import Fleet
from tests.helpers import start_process, unique, wait_for_worker, wait_job

pytestmark = pytest.mark.slow

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [4.6, 3.1, 1.5, 0.2]]
IRIS_CLASSES = ["setosa", "versicolor", "virginica"]


def register(name: str, family: str = "mlp", seed: int = 0, epochs: int = 3, **params: Any) -> int:
    """Train a small model in this process and register it as the next version."""
    from workers import modelio
    from workers.training import train

    dataset = "iris" if family == "mlp" else "sentiment"
    body = {"model_name": name, "family": family, "dataset": {"builtin": dataset},
            "params": params, "training": {"epochs": epochs, "seed": seed}}  # fmt: skip
    spec = resolve_train(TrainRequest.model_validate(body))
    trained = train(spec)
    with session_scope() as s:
        job = jobs.create_job(
            s, kind=JobKind.train, model_name=name, spec=spec.model_dump(mode="json"), queue="t"
        )
    saved = modelio.save(trained, open_store(), f"models/{name}/{job.id}")
    with session_scope() as s:
        version = model_registry.register_model_version(
            s, model_name=name, family=family, params=spec.params,
            input_schema=trained.input_schema, metrics=trained.metrics,
            artifact_uri=saved.uri, sha256=saved.sha256, job_id=job.id,
        )  # fmt: skip
    return version.version


def tensor(rows: list[list[float]], dtype: str = "float32") -> dict[str, Any]:
    fmt = {"float32": "f", "float64": "d", "float16": "e"}[dtype]
    data = b"".join(struct.pack(f"<{len(r)}{fmt}", *r) for r in rows)
    shape = [len(rows), len(rows[0])]
    return {"dtype": dtype, "shape": shape, "data": base64.b64encode(data).decode()}


def floats(wire: dict[str, Any]) -> list[float]:
    raw = base64.b64decode(wire["data"])
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def recorded(client: Any, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """The job a prediction is recorded as, once its worker has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200 and response.json()["state"] != "queued":
            job: dict[str, Any] = response.json()
            return job
        time.sleep(0.05)
    raise TimeoutError(f"prediction {job_id} was not recorded within {timeout} s")


@pytest.fixture(scope="module")
def iris() -> str:
    """A model with two versions whose answers differ."""
    name = unique("serve")
    register(name, seed=1, epochs=2)
    register(name, seed=2, epochs=30)
    return name


def predict(client: Any, name: str, inputs: Any, **params: Any) -> Any:
    return client.post(f"/v1/models/{name}/predict", params=params, json={"inputs": inputs})


def test_a_prediction_answers_with_its_outputs_and_is_recorded(
    api_client: Any, worker: Path, iris: str
) -> None:
    response = predict(api_client, iris, IRIS)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == iris and answer["model_version"] == 2
    assert [o["label"] for o in answer["outputs"]] == [
        "setosa",
        "virginica",
        "versicolor",
        "setosa",
    ]
    for out in answer["outputs"]:
        assert sum(out["probabilities"].values()) == pytest.approx(1.0)

    job = recorded(api_client, answer["job_id"])
    assert job["kind"] == "predict" and job["state"] == "succeeded"
    assert job["result"]["outputs"] == answer["outputs"]
    assert job["spec"]["inputs"] == IRIS and job["model_version"] == 2
    assert job["worker"].startswith("cpu@") and job["finished_at"]
    assert job["usage"]["samples"] == 4
    events = api_client.get(f"/v1/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events] == ["succeeded"]


def test_concurrent_callers_of_two_versions_each_get_their_own_outputs(
    api_client: Any, worker: Path, iris: str
) -> None:
    # Alone, one request at a time: what each caller must get back.
    expected = {}
    for version in (1, 2):
        for i, row in enumerate(IRIS):
            answer = predict(api_client, iris, [row, IRIS[-1 - i]], version=version).json()
            expected[version, i] = answer["outputs"]
    # A long wait, so that concurrent callers gather into batches.
    api_client.patch(f"/v1/models/{iris}", json={"max_wait_ms": 300}).raise_for_status()

    def call(n: int) -> tuple[int, int, Any]:
        version, i = 1 + n % 2, n % len(IRIS)
        response = predict(api_client, iris, [IRIS[i], IRIS[-1 - i]], version=version)
        assert response.status_code == 200, response.text
        return version, i, response.json()

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, range(48)))
    finally:
        api_client.patch(f"/v1/models/{iris}", json={"max_wait_ms": None}).raise_for_status()
    for version, i, answer in answers:
        assert answer["model_version"] == version
        got, want = answer["outputs"], expected[version, i]
        assert [o["label"] for o in got] == [o["label"] for o in want]
        for g, w in zip(got, want, strict=True):
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
    # Batched, and every one recorded with its own outputs.
    jobs = [recorded(api_client, answer["job_id"]) for _, _, answer in answers]
    assert max(job["usage"]["batch_requests"] for job in jobs) > 1
    for (_, _, answer), job in zip(answers, jobs, strict=True):
        assert job["state"] == "succeeded" and job["result"]["outputs"] == answer["outputs"]


def test_a_new_version_is_served_once_registered(api_client: Any, worker: Path) -> None:
    name = unique("fresh")
    register(name)
    assert predict(api_client, name, IRIS[:1]).json()["model_version"] == 1
    register(name, seed=5)
    assert predict(api_client, name, IRIS[:1]).json()["model_version"] == 2
    assert predict(api_client, name, IRIS[:1], version=1).json()["model_version"] == 1


def test_tensors_in_and_out(api_client: Any, worker: Path, iris: str) -> None:
    as_json = predict(api_client, iris, IRIS).json()["outputs"]
    for dtype in ("float32", "float64", "float16"):
        response = predict(api_client, iris, tensor(IRIS, dtype))
        assert response.status_code == 200, response.text
        assert [o["label"] for o in response.json()["outputs"]] == [o["label"] for o in as_json]

    body = {"inputs": tensor(IRIS), "outputs": "tensor"}
    answer = api_client.post(f"/v1/models/{iris}/predict", json=body).json()
    out = answer["outputs"]
    assert out["dtype"] == "float32" and out["shape"] == [4, 3]
    assert answer["classes"] == IRIS_CLASSES
    probabilities = floats(out)
    for r, row in enumerate(as_json):
        got = probabilities[r * 3 : r * 3 + 3]
        assert got == pytest.approx([row["probabilities"][c] for c in IRIS_CLASSES], abs=1e-5)
    job = recorded(api_client, answer["job_id"])
    assert job["result"]["outputs"] == out and job["spec"]["inputs"] == body["inputs"]


@pytest.mark.parametrize(
    ("inputs", "field", "words"),
    [
        ({"dtype": "int8", "shape": [1, 4], "data": ""}, "inputs.dtype", "float32"),
        ({"dtype": "float32", "shape": [4], "data": ""}, "inputs.shape", "at least 2"),
        ({**tensor(IRIS), "shape": [2, 4]}, "inputs.data", "shape [2, 4] of float32 takes 32"),
        ({**tensor(IRIS), "data": "not base64!"}, "inputs.data", "base64"),
        (tensor([r[:3] for r in IRIS]), "inputs.shape", "the model takes 4"),
        ([[1.0, 2.0]], "inputs[0]", "expected 4"),
        (["a text"], "inputs[0]", "not a text"),
    ],
)
def test_inputs_that_do_not_fit_are_refused_with_the_field(
    api_client: Any, worker: Path, iris: str, inputs: Any, field: str, words: str
) -> None:
    response = predict(api_client, iris, inputs)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field and words in error["detail"], error
    assert "job_id" not in error  # refused before it ran: no job to look up


def test_what_the_worker_refuses_is_422_and_recorded(
    api_client: Any, worker: Path, iris: str
) -> None:
    nan = tensor([[float("nan"), 1.0, 1.0, 1.0]])
    response = predict(api_client, iris, nan)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["type"] == "bad_data" and "NaN" in error["detail"]
    job = recorded(api_client, error["job_id"])
    assert job["state"] == "failed" and job["error"]["type"] == "bad_data"


def test_a_message_that_is_not_a_batch_is_refused_and_the_worker_serves_on(
    api_client: Any, worker: Path, iris: str
) -> None:
    bad = {"model": iris, "version": "latest", "queue": "predict.default", "reply": "nobody",
           "items": [{"id": "x", "inputs": "not rows", "outputs": "json"}]}  # fmt: skip
    task_id = unique("malformed")
    get_celery().send_task(TASK_SERVE, args=[bad], task_id=task_id, queue=predict_queue("default"))
    deadline = time.monotonic() + 30
    while f"refused serve message {task_id}" not in worker.read_text():
        assert time.monotonic() < deadline, worker.read_text()[-3000:]
        time.sleep(0.05)
    line = next(x for x in worker.read_text().splitlines() if task_id in x and "refused" in x)
    assert "not a batch of sync predictions" in line and "items.0.inputs" in line, line
    assert "items.0.by: Field required" in line and "items.0.at: Field required" in line, line
    assert "Traceback" not in worker.read_text().split(task_id, 1)[1]
    response = predict(api_client, iris, IRIS)
    assert response.status_code == 200, response.text


def test_unknown_models_versions_and_bad_options(api_client: Any, iris: str) -> None:
    assert predict(api_client, unique("none"), IRIS).status_code == 404
    response = predict(api_client, iris, IRIS, version=9)
    assert response.status_code == 404 and response.json()["field"] == "version"
    assert "job_id" not in response.json()
    assert predict(api_client, iris, IRIS, version=0).status_code == 422
    body = {"inputs": IRIS, "timeout": 100_000}
    response = api_client.post(f"/v1/models/{iris}/predict", json=body)
    assert response.status_code == 422 and response.json()["field"] == "timeout"
    response = api_client.post(f"/v1/models/{iris}/predict", json={"inputs": IRIS, "x": 1})
    assert response.status_code == 422 and response.json()["field"] == "x"


def test_a_models_batching_settings(api_client: Any, iris: str) -> None:
    response = api_client.patch(f"/v1/models/{iris}", json={"max_batch_size": 64})
    assert response.status_code == 200, response.text
    assert response.json()["max_batch_size"] == 64
    got = api_client.get(f"/v1/models/{iris}").json()
    assert got["max_batch_size"] == 64 and got["max_wait_ms"] is None
    response = api_client.patch(f"/v1/models/{iris}", json={"max_batch_size": 0})
    assert response.status_code == 422 and response.json()["field"] == "max_batch_size"
    assert api_client.patch(f"/v1/models/{unique('none')}", json={}).status_code == 404
    api_client.patch(f"/v1/models/{iris}", json={"max_batch_size": None}).raise_for_status()
    assert api_client.get(f"/v1/models/{iris}").json()["max_batch_size"] is None


def test_with_no_worker_the_job_waits_and_a_clean_shutdown_records_everything(
    api_client: Any, iris: str, tmp_path: Path
) -> None:
    pool = unique("p")
    body = {"inputs": IRIS, "pool": pool}
    # No worker serves the pool yet: 202 at once, with the job recorded as queued.
    response = api_client.post(f"/v1/models/{iris}/predict", json=body)
    assert response.status_code == 202, response.text
    waiting = response.json()
    assert waiting["state"] == "queued" and "no online worker" in waiting["message"]

    # A worker whose writer holds every record until it stops.
    proc = start_process(
        ["worker", "--cpu", "--queues", "predict", "--pool", pool],
        tmp_path / "worker.log",
        env={"TORCHQUEUE_RESULT_FLUSH_MS": "60000"},
    )
    try:
        wait_for_worker("cpu-predict@")
        time.sleep(SERVED_TTL_SECONDS + 0.5)  # the API's view of the served queues catches up
        answers = []
        for row in IRIS:
            response = api_client.post(
                f"/v1/models/{iris}/predict", json={"inputs": [row], "pool": pool}
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
        for answer in answers:  # answered, and not yet written
            assert api_client.get(f"/v1/jobs/{answer['job_id']}").status_code == 404
    finally:
        stop_process(proc, timeout=30)
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    for answer in answers:
        job = api_client.get(f"/v1/jobs/{answer['job_id']}").json()
        assert job["state"] == "succeeded" and job["result"]["outputs"] == answer["outputs"]
    job = api_client.get(f"/v1/jobs/{waiting['id']}").json()
    assert job["state"] == "succeeded" and len(job["result"]["outputs"]) == 4


def test_the_job_route_takes_tensors_too(api_client: Any, worker: Path, iris: str) -> None:
    body = {"model_name": iris, "inputs": tensor(IRIS), "outputs": "tensor", "wait": 60}
    response = api_client.post("/v1/jobs/predict", json=body)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["outputs"]["shape"] == [4, 3] and result["classes"] == IRIS_CLASSES
    assert sum(floats(result["outputs"])[:3]) == pytest.approx(1.0, abs=1e-5)


def test_a_worker_killed_during_a_batch_loses_no_prediction(fleet: Fleet, api_client: Any) -> None:
    fleet.start("reaper")
    pool = unique("kill")
    worker = ["--cpu", "--queues", "predict", "--pool", pool]
    first = fleet.worker(*worker, name="cpu-predict@")
    name = unique("big")
    register(name, epochs=1, hidden_sizes=[4096, 4096])  # a slow forward pass
    rows = [IRIS[i % 4] for i in range(10_000)]
    body = {"inputs": tensor(rows), "outputs": "tensor", "timeout": 4, "pool": pool}
    time.sleep(SERVED_TTL_SECONDS + 0.5)  # the API's view of the served queues catches up

    with ThreadPoolExecutor(1) as call:
        pending = call.submit(api_client.post, f"/v1/models/{name}/predict", json=body)
        time.sleep(1.0)  # the batch is in the worker's forward pass
        fleet.kill9(first)
        response = pending.result()
    assert response.status_code == 202, response.text[:300]
    job = response.json()
    assert job["state"] == "queued"

    fleet.worker(*worker, name="cpu-predict@")  # the reaper sends it again; this one runs it
    done = wait_job(api_client, job["id"], timeout=90)
    assert done["state"] == "succeeded", (done["error"], done["message"])
    assert done["result"]["outputs"]["shape"] == [10_000, 3]
    events = [e["kind"] for e in api_client.get(f"/v1/jobs/{job['id']}/events").json()]
    assert "resent" in events and events[-1] == "succeeded"
