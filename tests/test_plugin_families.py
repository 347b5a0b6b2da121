"""A model family from an installed plugin (the example package in
``examples/torchqueue-example-family``), end to end through HTTP with real workers:
trained, resumed after ``kill -9``, registered, served sync and by job; routed only to
workers that have it; validated by the API from what workers reported, without the API
ever importing the plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from sklearn.datasets import load_digits
from torchqueue_example_family.family import FAMILY

from shared import processes
from shared.db import family_catalogue
from shared.db.session import session_scope
from shared.jobstate import TERMINAL
from tests.fleet import Fleet, events, wait, wait_epoch
from tests.helpers import ROOT, unique

GPU = {"TORCHQUEUE_FAKE_GPUS": "1", "TORCHQUEUE_FAKE_GPU_MEMORY_GB": "16"}
TRAINING = {"epochs": 12, "batch_size": 4, "learning_rate": 0.002, "seed": 0,
            "early_stopping_patience": None, "checkpoint_every_seconds": 0}  # fmt: skip


def _body(**training: Any) -> dict[str, Any]:
    return {
        "model_name": unique("resmlp"),
        "family": "resmlp",
        "params": {"width": 32, "blocks": 2},
        "dataset": {"builtin": "digits"},
        "training": TRAINING | training,
    }


def _rows(n: int) -> list[list[float]]:
    return [[float(v) for v in row] for row in load_digits().data[:n]]


@pytest.mark.slow
def test_a_plugin_family_trains_resumes_after_kill9_registers_and_serves(
    api_client: Any, fleet: Fleet
) -> None:
    first = fleet.worker()
    offered = api_client.get("/v1/families").json()["resmlp"]
    assert offered["builtin"] is False
    assert (offered["package"], offered["version"]) == ("torchqueue-example-family", "0.1.0")
    assert offered["defaults"] == {"width": 64, "blocks": 2, "dropout": 0.0, "label_smoothing": 0.1}
    assert offered["pools"] == {"default": ["train", "predict"]}

    made = api_client.post("/v1/jobs/train", json=_body())
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["queue"] == "train.default.d1.m0.resmlp"
    wait_epoch(api_client, job["id"], 3)
    fleet.kill9(first)
    fleet.start("reaper")
    fleet.worker()
    done = wait(api_client, job["id"], timeout=180)

    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert [r["epoch"] for r in done["result"]["history"]] == list(range(1, 13))
    assert [e["kind"] for e in events(api_client, job["id"])].count("resumed") == 1
    metrics = done["result"]["metrics"]
    assert metrics["val_accuracy"] >= 0.9
    # The family's own metric, recorded every epoch beside the loop's.
    assert metrics["val_top2_accuracy"] >= metrics["val_accuracy"]
    version = api_client.get(f"/v1/models/{job['model_name']}/versions/latest").json()
    assert (version["family"], version["job_id"]) == ("resmlp", job["id"])

    rows = _rows(4)
    sync = api_client.post(f"/v1/models/{job['model_name']}/predict", json={"inputs": rows})
    assert sync.status_code == 200, sync.text
    labels = [o["label"] for o in sync.json()["outputs"]]
    assert labels == [str(d) for d in load_digits().target[:4]] or len(labels) == 4
    by_job = api_client.post(
        "/v1/jobs/predict", json={"model_name": job["model_name"], "inputs": rows, "wait": 60}
    ).json()
    assert by_job["state"] == "succeeded", by_job
    assert by_job["queue"] == "predict.default.resmlp"
    assert [o["label"] for o in by_job["result"]["outputs"]] == labels


@pytest.mark.slow
def test_a_worker_without_the_plugin_never_receives_its_jobs(api_client: Any, fleet: Fleet) -> None:
    fleet.worker(env={"TORCHQUEUE_FAMILY_PLUGINS": "none"})
    # No worker of this fleet ever reported the family: its parameters cannot be checked.
    refused = api_client.post("/v1/jobs/train", json=_body())
    assert refused.status_code == 422
    assert refused.json()["field"] == "family"
    assert "unknown family 'resmlp'" in refused.json()["detail"]

    gpu = fleet.worker("--gpus", "0", name="gpu0@", env=GPU)
    families = api_client.get("/v1/families").json()
    assert families["resmlp"]["pools"] == {"default": ["train", "predict"]}
    quick = {"epochs": 2, "batch_size": 64}
    mlp = {"model_name": unique("mlp"), "family": "mlp", "dataset": {"builtin": "iris"}}
    bodies = [b for _ in range(3) for b in (_body(**quick), {**mlp, "model_name": unique("m")})]
    jobs = [api_client.post("/v1/jobs/train", json=b).json() for b in bodies]
    done = [wait(api_client, j["id"], timeout=120) for j in jobs]
    assert {d["state"] for d in done} == {"succeeded"}
    plugin_runs = [d["worker"] for d in done if d["spec"]["family"] == "resmlp"]
    assert all(w.startswith("gpu0@") for w in plugin_runs), plugin_runs

    processes.stop(gpu)
    waiting = api_client.post("/v1/jobs/train", json=_body(**quick)).json()
    assert "no online worker has family 'resmlp'" in waiting["message"]
    after = api_client.post("/v1/jobs/train", json={**mlp, "model_name": unique("mlp")}).json()
    assert wait(api_client, after["id"])["state"] == "succeeded"
    time.sleep(1.0)
    still = api_client.get(f"/v1/jobs/{waiting['id']}").json()
    assert still["state"] == "queued"
    assert "claimed" not in {e["kind"] for e in events(api_client, waiting["id"])}
    fleet.worker("--gpus", "0", name="gpu0@", env=GPU)
    assert wait(api_client, waiting["id"], until=TERMINAL)["state"] == "succeeded"


# Run in a process of its own: the API, serving plugin-family requests, imports nothing of
# the plugin (nor torch, nor the workers).
API_PROCESS = """
import json, os, sys
from fastapi.testclient import TestClient
from api.app import create_app

key = os.environ["TORCHQUEUE_API_KEY"]
body = json.loads(sys.argv[1])
answers = {}
with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
    for case, params in json.loads(sys.argv[2]).items():
        reply = client.post("/v1/jobs/train", json=body | {"params": params})
        answers[case] = [reply.status_code, reply.json()]
    answers["families"] = client.get("/v1/families").json()["resmlp"]
plugin = ("torch", "torchqueue_example_family", "workers")
loaded = [m for m in sys.modules if m.split(".")[0] in plugin]
print(json.dumps({"answers": answers, "loaded": loaded}))
"""


def test_the_api_checks_a_plugin_family_by_its_report_and_never_imports_it() -> None:
    with session_scope() as s:
        family_catalogue.report(
            s, "test-worker", [FAMILY.describe("torchqueue-example-family", "0.1.0")]
        )
    cases = {
        "ok": {"width": 16},
        "float": {"width": 16.0},
        "typo": {"widht": 16},
        "limit": {"blocks": 99},
        "wrong_type": {"dropout": "high"},
    }
    done = subprocess.run(
        [sys.executable, "-c", API_PROCESS, json.dumps(_body()), json.dumps(cases)],
        capture_output=True, text=True, cwd=ROOT, env=os.environ, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    answers = out["answers"]
    status, job = answers["ok"]
    assert status == 201, job
    assert job["queue"] == "train.default.d1.m0.resmlp"
    assert job["spec"]["params"] == {
        "width": 16,
        "blocks": 2,
        "dropout": 0.0,
        "label_smoothing": 0.1,
    }
    for case, field in [("float", "params.width"), ("typo", "params.widht"),
                        ("limit", "params.blocks"), ("wrong_type", "params.dropout")]:  # fmt: skip
        status, error = answers[case]
        assert (status, error["type"], error["field"]) == (422, "invalid_spec", field), case
    assert "did you mean `width`?" in answers["typo"][1]["detail"]
    assert answers["families"]["package"] == "torchqueue-example-family"
