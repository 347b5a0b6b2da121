"""A database that blinks as work ends costs no finished work: a real worker reaches
PostgreSQL through a proxy that drops every connection at the moment the worker records an
outcome, and refuses new ones for several seconds. The worker keeps the outcome, renews the
lease, and records it when the database is back: one attempt, nothing run twice."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import get_settings
from tests.dbproxy import Proxy
from tests.fleet import Fleet, events, trained_model, wait
from tests.helpers import unique

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("TORCHQUEUE_TEST_DATABASE_URL"),
        reason="needs PostgreSQL (TORCHQUEUE_TEST_DATABASE_URL): a TCP proxy cuts its connections",
    ),
]

OUTAGE_SECONDS = 8.0
IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
# What a job's history holds when it was taken back and ran again.
RETRIED = {"requeued", "lease_expired", "resumed"}


def _figures(name: str, **figures: Any) -> None:
    print(f"\n[{name}] " + "  ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture
def proxy(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """The fleet's database behind a proxy; leases as long as the defaults, so that the
    outage is shorter than a lease, as a blink of the database is."""
    monkeypatch.setenv("TORCHQUEUE_LEASE_SECONDS", "30")
    monkeypatch.setenv("TORCHQUEUE_HEARTBEAT_SECONDS", "1")
    p = Proxy(get_settings().db_url)
    yield p
    p.close()


def _worker(fleet: Fleet, proxy: Proxy) -> Any:
    return fleet.worker(env={"TORCHQUEUE_DATABASE_URL": proxy.proxied_url})


def _recovered(fleet: Fleet) -> None:
    assert "could not record the outcome" in fleet.log(), fleet.log()[-3000:]


def test_training_that_ends_in_an_outage_succeeds_once(
    api_client: Any, fleet: Fleet, proxy: Proxy
) -> None:
    fleet.start("reaper")
    _worker(fleet, proxy)
    name = unique("outage")
    body = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": 40, "early_stopping_patience": None}}  # fmt: skip
    proxy.cut_at(b"INSERT INTO model_versions", OUTAGE_SECONDS)
    job = api_client.post("/v1/jobs/train", json=body).json()
    done = wait(api_client, job["id"], timeout=120)

    assert proxy.cuts == 1
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1
    history = done["result"]["history"]
    assert [r["epoch"] for r in history] == list(range(1, 41))
    assert {r["attempt"] for r in history} == {1}
    kinds = [e["kind"] for e in events(api_client, job["id"])]
    assert not RETRIED & set(kinds), kinds
    versions = api_client.get(f"/v1/models/{name}").json()["versions"]
    assert [v["job_id"] for v in versions] == [job["id"]]
    _recovered(fleet)
    assert "is no longer" not in fleet.log()  # no warning where nothing is wrong
    _figures("database down as training ends", submitted=1, finished=1, attempts=1,
             duplicates=len(versions) - 1, epochs_retrained=0,
             outage_s=OUTAGE_SECONDS)  # fmt: skip


def test_a_prediction_job_that_ends_in_an_outage_succeeds_once(
    api_client: Any, fleet: Fleet, proxy: Proxy
) -> None:
    _worker(fleet, proxy)
    name = trained_model(api_client, "outage-predict")

    proxy.cut_at(b", result=", OUTAGE_SECONDS)  # the UPDATE that ends the job
    job = api_client.post("/v1/jobs/predict", json={"model_name": name, "inputs": IRIS}).json()
    done = wait(api_client, job["id"], timeout=60)

    assert proxy.cuts == 1
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    assert len(done["result"]["outputs"]) == 2
    kinds = [e["kind"] for e in events(api_client, job["id"])]
    assert not RETRIED & set(kinds), kinds
    _recovered(fleet)


def test_sync_predictions_answered_in_an_outage_are_recorded_after(
    api_client: Any, fleet: Fleet, proxy: Proxy
) -> None:
    _worker(fleet, proxy)
    name = trained_model(api_client, "outage-sync")
    # A version by number is read once and kept by the worker (``latest`` is looked up
    # every batch, and answers 503 while the database is away).
    url = f"/v1/models/{name}/predict?version=1"
    assert api_client.post(url, json={"inputs": IRIS}).status_code == 200

    proxy.cut_at(b"INSERT INTO jobs", OUTAGE_SECONDS)
    answered = []
    for _ in range(5):
        response = api_client.post(url, json={"inputs": IRIS})
        assert response.status_code == 200, response.text
        answered.append(response.json()["job_id"])
    deadline = time.monotonic() + OUTAGE_SECONDS + 30
    for job_id in answered:
        while (response := api_client.get(f"/v1/jobs/{job_id}")).status_code == 404:
            assert time.monotonic() < deadline, f"prediction {job_id} was never recorded"
            time.sleep(0.2)
        assert response.json()["state"] == "succeeded"
    assert proxy.cuts == 1
