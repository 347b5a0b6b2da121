"""Faults, for real: workers killed with SIGKILL mid-job, Redis flushed under queued jobs,
duplicated messages, cancellations, retried submissions. Each fault test prints its
figures: jobs submitted and finished, duplicates, epochs trained again, recovery time."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.config import get_settings
from shared.enqueue import send_job
from shared.jobstate import TERMINAL
from shared.processes import free_port
from shared.schemas import JobOut
from tests.fleet import Fleet, events, trained_model, wait, wait_epoch, waiting_messages
from tests.helpers import AUTH, reset_caches, unique
from tests.test_import_rules import serving

pytestmark = pytest.mark.slow


def _figures(name: str, **figures: Any) -> None:
    print(f"\n[{name}] " + "  ".join(f"{k}={v}" for k, v in figures.items()))


SLOW_TRAINING: dict[str, Any] = {
    "family": "text_lstm",
    "dataset": {"builtin": "sentiment"},
    # A checkpoint every epoch: progress that shows epoch k means a checkpoint of k, under
    # any load (by default short epochs are checkpointed less often).
    "training": {
        "epochs": 10,
        "batch_size": 2,
        "learning_rate": 0.005,
        "checkpoint_every_seconds": 0,
    },
}


def test_a_worker_killed_mid_training_is_resumed_by_another(api_client: Any, fleet: Fleet) -> None:
    first = fleet.worker()
    name = unique("kill9")
    job = api_client.post("/v1/jobs/train", json={"model_name": name, **SLOW_TRAINING}).json()
    wait_epoch(api_client, job["id"], 3)
    faulted = fleet.kill9(first)
    started_before = (api_client.get(f"/v1/jobs/{job['id']}").json()["progress"] or {})["epoch"]

    fleet.start("reaper")
    fleet.worker()
    reclaimed = wait(api_client, job["id"], until=("running", *TERMINAL), attempts=2)
    recovered = time.monotonic()
    done = wait(api_client, job["id"])

    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and reclaimed["attempts"] == 2
    history = done["result"]["history"]
    assert [r["epoch"] for r in history] == list(range(1, 11))
    resumed = [e for e in events(api_client, job["id"]) if e["kind"] == "resumed"]
    assert len(resumed) == 1
    checkpoint = int(resumed[0]["message"].rsplit(" ", 1)[1])
    assert checkpoint >= 3
    # Epochs up to the checkpoint were trained once, by the first attempt only.
    assert {r["attempt"] for r in history[:checkpoint]} == {1}
    assert {r["attempt"] for r in history[checkpoint:]} == {2}
    versions = api_client.get(f"/v1/models/{name}").json()["versions"]
    assert [v["job_id"] for v in versions] == [job["id"]]
    _figures(
        "kill -9 mid-training",
        submitted=1,
        finished=1,
        duplicates=len(versions) - 1,
        epochs_retrained=max(started_before - checkpoint, 0) + 1,
        recovery_s=round(recovered - faulted, 2),
    )


def test_a_job_that_keeps_losing_its_worker_fails_with_the_reason(
    api_client: Any, fleet: Fleet
) -> None:
    first = fleet.worker()
    body = {"model_name": unique("doomed"), **SLOW_TRAINING, "max_attempts": 1}
    job = api_client.post("/v1/jobs/train", json=body).json()
    wait_epoch(api_client, job["id"], 1)
    fleet.kill9(first)
    fleet.start("reaper")
    done = wait(api_client, job["id"])
    assert done["state"] == "failed"
    assert done["error"]["type"] == "worker_lost"
    assert "giving up" in done["error"]["detail"]
    assert "lease_expired" not in {e["kind"] for e in events(api_client, job["id"])}


def test_redis_flushed_under_queued_jobs_loses_none(api_client: Any, fleet: Fleet) -> None:
    jobs = [
        api_client.post(
            "/v1/jobs/train",
            json={"model_name": unique("flush"), "family": "mlp", "dataset": {"builtin": "iris"}},
        ).json()
        for _ in range(5)
    ]
    client = redis.Redis.from_url(fleet.redis_url)
    assert waiting_messages(client) == 5
    client.flushall()
    faulted = time.monotonic()
    fleet.start("reaper")
    fleet.worker()
    done = [wait(api_client, j["id"]) for j in jobs]
    recovered = time.monotonic()
    assert [j["state"] for j in done] == ["succeeded"] * 5
    for j in done:
        assert "resent" in {e["kind"] for e in events(api_client, j["id"])}
    _figures(
        "redis flushed",
        submitted=5,
        finished=sum(j["state"] == "succeeded" for j in done),
        duplicates=0,
        epochs_retrained=0,
        recovery_s=round(recovered - faulted, 2),
    )


def test_a_job_submitted_while_redis_is_down_runs_when_it_is_back(
    api_client: Any, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_caches()
    body = {"model_name": unique("down"), "family": "mlp", "dataset": {"builtin": "iris"}}
    job = api_client.post("/v1/jobs/train", json=body).json()
    assert job["state"] == "queued" and "waiting to be sent" in job["message"]
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL", fleet.redis_url)
    reset_caches()
    fleet.start("reaper")
    fleet.worker()
    assert wait(api_client, job["id"])["state"] == "succeeded"


def test_the_same_message_twice_runs_the_job_once(api_client: Any, fleet: Fleet) -> None:
    body = {"model_name": unique("twice"), "family": "mlp", "dataset": {"builtin": "iris"}}
    job = api_client.post("/v1/jobs/train", json=body).json()
    send_job(JobOut.model_validate(job))
    assert waiting_messages(redis.Redis.from_url(fleet.redis_url)) == 2
    fleet.worker()
    done = wait(api_client, job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1
    deadline = time.monotonic() + 20
    while f"job {job['id']} is not queued" not in fleet.log():
        assert time.monotonic() < deadline, "the second message was never consumed"
        time.sleep(0.1)
    assert len(api_client.get(f"/v1/models/{body['model_name']}").json()["versions"]) == 1
    kinds = Counter(e["kind"] for e in events(api_client, job["id"]))
    assert kinds["claimed"] == 1 and kinds["succeeded"] == 1


def test_cancel_a_queued_job_and_a_running_one(api_client: Any, fleet: Fleet) -> None:
    queued = api_client.post(
        "/v1/jobs/train",
        json={"model_name": unique("cq"), "family": "mlp", "dataset": {"builtin": "iris"}},
    ).json()
    cancelled = api_client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    fleet.worker()
    body = {"model_name": unique("cr"), **SLOW_TRAINING}
    body["training"] = {**SLOW_TRAINING["training"], "epochs": 500}
    running = api_client.post("/v1/jobs/train", json=body).json()
    wait_epoch(api_client, running["id"], 2)
    asked = time.monotonic()
    response = api_client.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.json()["state"] == "cancelling"
    done = wait(api_client, running["id"], timeout=30)
    stopped_after = time.monotonic() - asked
    assert done["state"] == "cancelled"
    assert stopped_after < 10  # within a batch, once the lease thread hears of it
    assert "checkpoint of epoch" in done["message"]
    checkpoint = Path(get_settings().artifacts_location) / "checkpoints" / running["id"]
    assert (checkpoint / "checkpoint.safetensors").exists()
    # The queued job's message was dropped when it arrived: it never ran.
    assert events(api_client, queued["id"])[-1]["kind"] == "cancelled"
    assert api_client.get(f"/v1/jobs/{queued['id']}").json()["started_at"] is None

    again = api_client.post(f"/v1/jobs/{running['id']}/cancel")
    assert again.status_code == 409
    assert "nothing to cancel" in again.json()["detail"]
    _figures("cancel running", stopped_within_s=round(stopped_after, 2))


def test_a_worker_shut_down_mid_training_gives_the_job_back(api_client: Any, fleet: Fleet) -> None:
    first = fleet.worker()
    job = api_client.post("/v1/jobs/train", json={"model_name": unique("term"), **SLOW_TRAINING})
    job_id = job.json()["id"]
    wait_epoch(api_client, job_id, 2)
    os.killpg(first.pid, signal.SIGTERM)
    first.wait(30)
    requeued = wait(api_client, job_id, until=("queued",), timeout=10)
    assert requeued["attempts"] == 0  # a clean shutdown is not the job's fault
    fleet.worker()
    done = wait(api_client, job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 1
    kinds = [e["kind"] for e in events(api_client, job_id)]
    assert "requeued" in kinds and "resumed" in kinds


def test_idempotent_submission(api_client: Any, fleet: Fleet) -> None:
    body = {"model_name": unique("idem"), "family": "mlp", "dataset": {"builtin": "iris"}}
    key = {"Idempotency-Key": unique("key")}
    first = api_client.post("/v1/jobs/train", json=body, headers=key)
    again = api_client.post("/v1/jobs/train", json=body, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = api_client.post("/v1/jobs/train", json={**body, "model_name": "x"}, headers=key)
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"

    racing = {"Idempotency-Key": unique("race")}
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: api_client.post("/v1/jobs/train", json=body, headers=racing), range(6)
            )
        )
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    listed = api_client.get("/v1/jobs", params={"model_name": body["model_name"]}).json()
    assert listed["total"] == 2


def test_200_jobs_while_the_only_worker_is_killed_twice(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start("reaper")
    worker = fleet.worker()
    api = serving(["api"], free_port(), "/healthz", tmp_path / "api.log")
    with api as base, httpx.Client(base_url=base, timeout=60, headers=AUTH) as http:
        model = trained_model(http, "chaos-model")
        names = [unique("chaos") for _ in range(4)]

        def submit(i: int) -> str:
            if i % 2:
                body: dict[str, Any] = {"model_name": model, "inputs": [[5.1, 3.5, 1.4, 0.2]]}
                response = http.post("/v1/jobs/predict", json=body)
            else:
                body = {
                    "model_name": names[i // 2 % 4],
                    "family": "mlp",
                    "dataset": {"builtin": "iris"},
                    "training": {"epochs": 3},
                }
                response = http.post("/v1/jobs/train", json=body)
            assert response.status_code == 201, response.text
            job_id: str = response.json()["id"]
            return job_id

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            pending = pool.map(submit, range(200))
            time.sleep(1.5)
            fleet.kill9(worker)
            worker = fleet.worker()
            time.sleep(1.5)
            fleet.kill9(worker)
            last_fault = time.monotonic()
            fleet.worker()
            ids = list(pending)
        done = [wait(http, job_id, timeout=240) for job_id in ids]
        finished = time.monotonic()

        states = Counter(j["state"] for j in done)
        assert states == {"succeeded": 200}, states
        terminal_events = Counter(
            e["kind"] for j in done for e in events(http, j["id"]) if e["kind"] in TERMINAL
        )
        assert terminal_events == {"succeeded": 200}
        version_jobs = [
            v["job_id"] for n in names for v in http.get(f"/v1/models/{n}").json()["versions"]
        ]
        assert sorted(version_jobs) == sorted(j["id"] for j in done if j["kind"] == "train")
        _figures(
            "200 jobs, worker killed twice",
            submitted=200,
            finished=len(done),
            duplicates=len(version_jobs) - len(set(version_jobs)),
            jobs_retried=sum(j["attempts"] > 1 for j in done),
            recovery_s=round(finished - last_fault, 2),
            total_s=round(finished - started, 2),
        )
