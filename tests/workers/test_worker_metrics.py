"""A worker's Prometheus metrics, scraped from its parent while its pool's child does the
work: they change as jobs run (scrape before and after), and ``--gpus all`` gives each
GPU's worker a port of its own."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.processes import free_port
from tests.fleet import Fleet, wait
from tests.helpers import unique

pytestmark = pytest.mark.slow
IRIS = [5.1, 3.5, 1.4, 0.2]


def _scrape(port: int, timeout: float = 30) -> dict[tuple[str, frozenset[Any]], float]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"nothing serves metrics on port {port}"
            time.sleep(0.2)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_a_workers_figures_change_as_it_trains_and_serves(api_client: Any, fleet: Fleet) -> None:
    port = free_port()
    fleet.worker(env={"TORCHQUEUE_WORKER_METRICS_PORT": str(port)})
    before = _scrape(port)
    name = unique("metered")
    body = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": 5, "early_stopping_patience": None}}  # fmt: skip
    job = api_client.post("/v1/jobs/train", json=body).json()
    assert wait(api_client, job["id"])["state"] == "succeeded"
    for _ in range(3):
        answer = api_client.post(f"/v1/models/{name}/predict", json={"inputs": [IRIS, IRIS]})
        assert answer.status_code == 200, answer.text
    after = _scrape(port)

    succeeded = {"kind": "train", "outcome": "succeeded"}
    assert _value(after, "torchqueue_worker_jobs_total", **succeeded) == (
        _value(before, "torchqueue_worker_jobs_total", **succeeded) + 1
    )
    assert _value(after, "torchqueue_worker_epoch_seconds_count") == 5
    assert _value(after, "torchqueue_worker_training_samples_total") == 5 * 120  # 150 - 30 held out
    assert _value(after, "torchqueue_worker_prediction_rows_total") == 6
    assert _value(after, "torchqueue_worker_model_cache_total", result="miss") == 1
    assert _value(after, "torchqueue_worker_model_cache_total", result="hit") == 2
    assert _value(after, "torchqueue_worker_model_cache_bytes") > 0
    # No GPU here: the worker's processes' CPU time and memory instead.
    assert _value(after, "torchqueue_worker_cpu_seconds_total") > 0
    assert _value(after, "torchqueue_worker_memory_bytes") > 100e6


def test_each_gpus_worker_serves_its_own_port(fleet: Fleet) -> None:
    base = free_port()
    env = {"TORCHQUEUE_FAKE_GPUS": "2", "TORCHQUEUE_WORKER_METRICS_PORT": str(base)}
    fleet.worker("--gpus", "all", name="gpu1@", env=env)
    for port in (base, base + 1):
        assert _value(_scrape(port), "torchqueue_worker_memory_bytes") > 0
