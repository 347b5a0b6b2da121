"""Sweeps through real workers: trials are ordinary jobs, asked for as earlier ones end,
never more at once than asked, pruned ones stopped early, and a sweep whose driver, a
worker and Redis are all lost finishes with exactly the trials asked for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from shared.db import keys
from shared.db.session import session_scope
from tests.fleet import Fleet, wait
from tests.helpers import unique

pytestmark = pytest.mark.slow

BASE: dict[str, Any] = {
    "family": "mlp",
    "dataset": {"builtin": "iris"},
    "params": {"hidden_sizes": [16]},
    "training": {"epochs": 8, "seed": 0, "early_stopping_patience": None},
}
SPACE: dict[str, Any] = {
    "training.learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 0.1},
    "params.hidden_sizes": {"type": "choice", "values": [[8], [32, 16]]},
    "training.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
}


def _sweep(client: Any, trials: int, parallel: int, **extra: Any) -> dict[str, Any]:
    body = {"base": {**BASE, "model_name": unique("sweep")}, "space": SPACE,
            "trials": trials, "parallel": parallel, **extra}  # fmt: skip
    made = client.post("/v1/sweeps", json=body)
    assert made.status_code == 201, made.text
    sweep: dict[str, Any] = made.json()
    return sweep


def _until_ended(
    client: Any, sweep_id: str, timeout: float = 240, each: Callable[[Any], None] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep: dict[str, Any] = client.get(f"/v1/sweeps/{sweep_id}").json()
        if each is not None:
            each(sweep)
        if sweep["state"] != "running":
            return sweep
        time.sleep(0.2)
    raise TimeoutError(f"sweep {sweep_id} still running: {sweep['counts']}")


def test_a_sweep_runs_its_trials_within_its_limit_and_promotes_the_best(
    api_client: Any, fleet: Fleet
) -> None:
    fleet.worker()
    fleet.worker("--gpus", "0", name="gpu0@", env={"TORCHQUEUE_FAKE_GPUS": "1"})
    sweep = _sweep(api_client, 6, 2, metric="val_accuracy", promote="best", sampler="random")
    assert sweep["state"] == "running" and len(sweep["trials"]) == 2
    assert {t["state"] for t in sweep["trials"]} == {"pending"}
    most = [0]

    def count(seen: dict[str, Any]) -> None:
        most[0] = max(most[0], sum(t["state"] == "pending" for t in seen["trials"]))

    done = _until_ended(api_client, sweep["id"], each=count)
    assert done["state"] == "finished", done
    trials = done["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    assert {t["state"] for t in trials} == {"complete"}
    assert most[0] == 2
    for t in trials:
        job = api_client.get(f"/v1/jobs/{t['job_id']}").json()
        assert job["state"] == "succeeded" and job["attempts"] == 1
        assert job["spec"]["trial"] == {"sweep_id": sweep["id"], "number": t["number"]}
        assert job["spec"]["training"]["learning_rate"] == t["params"]["training.learning_rate"]
        assert job["spec"]["params"]["hidden_sizes"] == t["params"]["params.hidden_sizes"]
        assert t["value"] == job["result"]["metrics"]["val_accuracy"]
    best = max(trials, key=lambda t: (t["value"], -t["number"]))
    assert done["best"]["number"] == best["number"]
    model = api_client.get(f"/v1/models/{sweep['model_name']}").json()
    assert model["aliases"]["best"] == best["model_version"]
    assert len(model["versions"]) == 6


def test_pruned_trials_stop_early_and_free_their_worker(api_client: Any, fleet: Fleet) -> None:
    fleet.worker()
    space = {"training.learning_rate": {"type": "log_uniform", "low": 1e-6, "high": 0.05}}
    body = {"base": {**BASE, "model_name": unique("pruned"),
                     "training": {**BASE["training"], "epochs": 30}},
            "space": space, "trials": 8, "parallel": 1, "metric": "val_loss",
            "pruner": "median", "sampler": "random", "seed": 3}  # fmt: skip
    made = api_client.post("/v1/sweeps", json=body)
    assert made.status_code == 201, made.text
    done = _until_ended(api_client, made.json()["id"])
    assert done["state"] == "finished"
    states = [t["state"] for t in done["trials"]]
    assert len(states) == 8 and set(states) <= {"complete", "pruned"}
    pruned = [t for t in done["trials"] if t["state"] == "pruned"]
    assert pruned, done["trials"]
    for t in pruned:
        assert t["epoch"] < 30
        job = api_client.get(f"/v1/jobs/{t['job_id']}").json()
        assert job["state"] == "cancelled"
        assert job["message"] == f"pruned after epoch {t['epoch']} by its sweep"
        assert job["model_version"] is None
        # It stopped within a batch of the verdict: no epoch after the one it was pruned at.
        assert (job["progress"] or {}).get("epoch", 0) <= t["epoch"]


def test_a_lost_driver_worker_and_redis_leave_exactly_the_trials_asked_for(
    api_client: Any, fleet: Fleet
) -> None:
    worker = fleet.worker()
    reaper = fleet.start("reaper")
    slow = {**BASE, "model_name": unique("durable"), "dataset": {"builtin": "digits"},
            "training": {**BASE["training"], "epochs": 6, "batch_size": 8}}  # fmt: skip
    space = {"training.learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 0.01}}
    made = api_client.post(
        "/v1/sweeps", json={"base": slow, "space": space, "trials": 5, "parallel": 2}
    )
    assert made.status_code == 201, made.text
    sweep_id = made.json()["id"]

    def running(seen: dict[str, Any]) -> bool:
        jobs = [api_client.get(f"/v1/jobs/{t['job_id']}").json() for t in seen["trials"]]
        return any((j["progress"] or {}).get("epoch", 0) >= 1 for j in jobs)

    deadline = time.monotonic() + 120
    while not running(api_client.get(f"/v1/sweeps/{sweep_id}").json()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    fleet.kill9(worker)
    fleet.kill9(reaper)
    redis.Redis.from_url(fleet.redis_url).flushall()

    fleet.start("reaper")
    fleet.worker()
    done = _until_ended(api_client, sweep_id, timeout=300)
    assert done["state"] == "finished", done
    assert [t["number"] for t in done["trials"]] == list(range(5))
    assert {t["state"] for t in done["trials"]} == {"complete"}
    jobs = [api_client.get(f"/v1/jobs/{t['job_id']}").json() for t in done["trials"]]
    assert all(j["state"] == "succeeded" for j in jobs)
    assert max(j["attempts"] for j in jobs) == 2  # the killed one resumed, not run anew
    versions = api_client.get(f"/v1/models/{slow['model_name']}").json()["versions"]
    assert sorted(v["job_id"] for v in versions) == sorted(j["id"] for j in jobs)


def test_a_cancelled_sweep_cancels_its_running_trials(api_client: Any, fleet: Fleet) -> None:
    fleet.worker()
    sweep = _sweep(api_client, 10, 2)
    cancelled = api_client.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert {t["state"] for t in cancelled["trials"]} == {"cancelled"}
    for t in cancelled["trials"]:
        job = wait(api_client, t["job_id"])
        assert job["state"] in ("cancelled", "succeeded")  # one may have ended first
    again = api_client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 409
    assert len(api_client.get(f"/v1/sweeps/{sweep['id']}").json()["trials"]) == 2


def test_a_key_sees_only_its_own_sweeps(api_client: Any) -> None:
    with session_scope() as s:
        _, mine = keys.create_key(s, unique("mine"), ["jobs:submit", "jobs:read", "models:write"])
        _, theirs = keys.create_key(s, unique("theirs"), ["jobs:read"])
    body = {"base": {**BASE, "model_name": unique("owned")}, "space": SPACE, "trials": 2}
    made = api_client.post("/v1/sweeps", json=body, headers={"Authorization": f"Bearer {mine}"})
    assert made.status_code == 201, made.text
    sweep_id = made.json()["id"]
    other = {"Authorization": f"Bearer {theirs}"}
    assert api_client.get(f"/v1/sweeps/{sweep_id}", headers=other).status_code == 404
    assert sweep_id not in [
        s["id"] for s in api_client.get("/v1/sweeps", headers=other).json()["items"]
    ]
    own = {"Authorization": f"Bearer {mine}"}
    assert sweep_id in [s["id"] for s in api_client.get("/v1/sweeps", headers=own).json()["items"]]
    api_client.post(f"/v1/sweeps/{sweep_id}/cancel")
