"""Pinned workers as separate processes, on fake GPUs: what each sees and serves, routing
by resources and pools, priorities, the table of workers, and what jobs cost."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import httpx
import pytest

from shared.celery_app import get_celery
from shared.processes import free_port
from tests.fleet import Fleet, wait, wait_epoch
from tests.helpers import FLOWER_PASSWORD, unique

pytestmark = pytest.mark.slow

GPUS = {"TORCHQUEUE_FAKE_GPUS": "3", "TORCHQUEUE_FAKE_GPU_MEMORY_GB": "24"}
HOST = socket.gethostname()


def _train(client: Any, **extra: Any) -> dict[str, Any]:
    body = {"model_name": unique("fleet"), "family": "mlp", "dataset": {"builtin": "iris"}}
    response = client.post("/v1/jobs/train", json=body | extra)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def _long_training(client: Any, epochs: int, batch_size: int) -> dict[str, Any]:
    """A text_lstm job that trains for ``epochs`` (no early stop): seconds per epoch."""
    training = {"epochs": epochs, "batch_size": batch_size, "early_stopping_patience": None}
    return _train(client, family="text_lstm", dataset={"builtin": "sentiment"}, training=training)


def _workers(client: Any) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in client.get("/v1/workers").json()}


def test_pinned_workers_see_their_devices_and_take_their_jobs(
    api_client: Any, fleet: Fleet
) -> None:
    fleet.worker("--gpus", "0", name="gpu0@", env=GPUS)
    fleet.worker("--gpus", "1,2", name="gpu1-2@", env=GPUS)
    workers = _workers(api_client)
    one, two = workers[f"gpu0@{HOST}"], workers[f"gpu1-2@{HOST}"]
    assert [d["index"] for d in one["devices"]] == [0]
    assert [d["index"] for d in two["devices"]] == [1, 2]
    assert one["queues"][0] == "train.default.d1.m0" and "predict.default" in one["queues"]
    assert "train.default.d2.m24" in two["queues"]
    assert "train.default.d1.m0" not in two["queues"]
    assert one["state"] == two["state"] == "online"
    assert one["versions"]["torch"].startswith("2.13")

    single = wait(api_client, _train(api_client)["id"])
    double = wait(api_client, _train(api_client, resources={"devices": 2})["id"])
    big = wait(
        api_client,
        _train(api_client, resources={"devices": 2, "min_device_memory_gb": 20})["id"],
    )
    assert single["worker"].startswith(f"gpu0@{HOST}:")
    assert double["worker"].startswith(f"gpu1-2@{HOST}:")
    assert big["worker"].startswith(f"gpu1-2@{HOST}:")
    assert {single["state"], double["state"], big["state"]} == {"succeeded"}


def test_a_job_for_a_pool_nobody_serves_says_so_then_runs_when_one_starts(
    api_client: Any, fleet: Fleet
) -> None:
    fleet.worker()
    job = _train(api_client, resources={"pool": "a100"})
    assert job["queue"] == "train.a100.d1.m0"
    assert job["message"] == "waiting on queue train.a100.d1.m0: no online worker serves it"
    time.sleep(1.0)
    assert api_client.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"
    fleet.worker("--cpu", "--pool", "a100", name="cpu@")
    done = wait(api_client, job["id"])
    assert done["state"] == "succeeded"
    a100 = [w for w in _workers(api_client).values() if w["pool"] == "a100"]
    assert done["worker"].startswith(a100[0]["name"] + ":")


def test_priorities_order_a_queue(api_client: Any, fleet: Fleet) -> None:
    jobs = {p: _train(api_client, priority=p) for p in (0, 9, 5, 2)}
    fleet.worker()
    done = {p: wait(api_client, j["id"]) for p, j in jobs.items()}
    order = sorted(done, key=lambda p: done[p]["started_at"])
    assert order == [9, 5, 2, 0]


def test_predictions_finish_while_a_long_training_runs(api_client: Any, fleet: Fleet) -> None:
    fleet.worker()
    fleet.worker("--cpu", "--queues", "predict", name="cpu-predict@")
    model = wait(api_client, _train(api_client)["id"])
    long = _long_training(api_client, epochs=200, batch_size=2)
    wait_epoch(api_client, long["id"], 1)
    body = {"model_name": model["model_name"], "inputs": [[5.1, 3.5, 1.4, 0.2]], "wait": 30}
    answer = api_client.post("/v1/jobs/predict", json=body)
    assert answer.status_code == 200 and answer.json()["state"] == "succeeded"
    assert answer.json()["worker"].startswith(f"cpu-predict@{HOST}:")
    assert api_client.get(f"/v1/jobs/{long['id']}").json()["state"] == "running"
    # The training worker's main loop stays responsive: it answers control commands
    # (what keeps it online in Flower) while its child trains.
    replies = get_celery().control.ping(destination=[f"cpu@{HOST}"], timeout=2)
    assert replies == [{f"cpu@{HOST}": {"ok": "pong"}}]
    api_client.post(f"/v1/jobs/{long['id']}/cancel")


def test_the_registry_shows_a_killed_worker_offline(api_client: Any, fleet: Fleet) -> None:
    proc = fleet.worker()
    job = wait(api_client, _train(api_client)["id"])
    me = _workers(api_client)[f"cpu@{HOST}"]
    assert me["state"] == "online" and me["pid"] == proc.pid
    assert me["current_job"] is None
    long = _train(
        api_client, training={"epochs": 5000, "batch_size": 1, "early_stopping_patience": None}
    )
    wait_epoch(api_client, long["id"], 1)
    assert _workers(api_client)[f"cpu@{HOST}"]["current_job"] == long["id"]
    fleet.kill9(proc)
    deadline = time.monotonic() + 15
    while _workers(api_client)[f"cpu@{HOST}"]["state"] != "offline":
        assert time.monotonic() < deadline, "the killed worker never went offline"
        time.sleep(0.2)
    assert job["state"] == "succeeded"


def test_gpus_all_runs_and_restarts_one_worker_per_gpu(api_client: Any, fleet: Fleet) -> None:
    fleet.worker("--gpus", "all", name="gpu1@", env={**GPUS, "TORCHQUEUE_FAKE_GPUS": "2"})
    deadline = time.monotonic() + 60
    while {f"gpu0@{HOST}", f"gpu1@{HOST}"} - set(_workers(api_client)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first = _workers(api_client)[f"gpu1@{HOST}"]["pid"]
    os.kill(first, 9)
    while _workers(api_client)[f"gpu1@{HOST}"]["pid"] == first:
        assert time.monotonic() < deadline + 60, "the dead worker was not restarted"
        time.sleep(0.3)
    assert _workers(api_client)[f"gpu1@{HOST}"]["state"] == "online"


def test_every_job_shows_what_it_cost(api_client: Any, fleet: Fleet) -> None:
    fleet.worker()
    job = wait(api_client, _train(api_client, training={"epochs": 5})["id"])
    usage = job["usage"]
    assert usage["device"] == "cpu"
    assert usage["wall_seconds"] > 0 and usage["device_seconds"] > 0
    assert usage["peak_memory_bytes"] > 50 * 2**20  # torch is loaded: tens of MB at least
    assert usage["samples"] == 120 * 5  # 80% of iris, five epochs
    assert usage["samples_per_second"] > 0
    assert usage["energy_joules"] is None  # no NVML here
    version = api_client.get(f"/v1/models/{job['model_name']}/versions/1").json()
    assert version["usage"] == usage
    body = {"model_name": job["model_name"], "inputs": [[5.1, 3.5, 1.4, 0.2]] * 3, "wait": 30}
    prediction = api_client.post("/v1/jobs/predict", json=body).json()
    assert prediction["usage"]["samples"] == 3


def test_flower_shows_the_job_its_model_and_its_progress(api_client: Any, fleet: Fleet) -> None:
    port = free_port()
    fleet.start("flower", "--port", str(port))
    login = ("flower", FLOWER_PASSWORD)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthcheck", auth=login, timeout=2)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.2)
    fleet.worker()
    job = _long_training(api_client, epochs=400, batch_size=4)
    wait_epoch(api_client, job["id"], 2)
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline + 30:
        info = httpx.get(f"http://127.0.0.1:{port}/api/task/info/{job['id']}", auth=login)
        seen = info.json() if info.status_code == 200 else {}
        if seen.get("state") == "PROGRESS":
            break
        time.sleep(0.3)
    assert seen["state"] == "PROGRESS", seen
    assert seen["result"].startswith("epoch ") and "/400 train_loss=" in seen["result"]
    assert job["id"] in seen["args"] and job["model_name"] in seen["kwargs"]
    assert seen["worker"].startswith("cpu@")
    api_client.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_two_device_job_trains_data_parallel(api_client: Any, fleet: Fleet) -> None:
    fleet.worker("--gpus", "0,1", name="gpu0-1@", env=GPUS)
    job = _train(
        api_client,
        resources={"devices": 2},
        training={
            "epochs": 60,
            "learning_rate": 0.01,
            "batch_size": 16,
            "early_stopping_patience": None,
        },
    )
    done = wait(api_client, job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["worker"].startswith(f"gpu0-1@{HOST}:")
    assert done["result"]["metrics"]["val_accuracy"] >= 0.9
    assert done["result"]["ranks"] == 2
    assert done["usage"]["samples"] == 120 * 60
    versions = api_client.get(f"/v1/models/{job['model_name']}").json()["versions"]
    assert [v["job_id"] for v in versions] == [job["id"]]
    log = fleet.log()
    assert "rank 1" not in log  # the follower reported no error
