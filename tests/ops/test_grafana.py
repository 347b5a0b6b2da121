"""The Grafana dashboard shows what torchqueue exports: every metric its queries name is
one that the API's ``GET /metrics`` or a worker's metrics port serves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT
from workers import metrics as worker_metrics

DASHBOARD = ROOT / "ops" / "grafana" / "torchqueue-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _names(text: str) -> set[str]:
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


# Run in a process of its own, as a worker's are: the multiprocess mode is chosen when
# prometheus-client is first imported.
RECORD = """
import sys
from prometheus_client import generate_latest
from workers import metrics
metrics.job_ended("train", "succeeded")
metrics.epoch_ended(0.1)
metrics.trained(10)
metrics.rows_answered(3)
metrics.cache_lookup(True, 100)
sys.stdout.write(generate_latest(metrics.registry([])).decode())
"""


def _worker_exported(tmp_path: Path) -> set[str]:
    """A worker's figures, recorded once each as its pool's child would, and its device's
    (the CPU's here; a GPU's names are those its collector makes)."""
    env = {**os.environ, worker_metrics.ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", RECORD], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60, check=True)  # fmt: skip
    return _names(done.stdout) | {name for name, _ in worker_metrics.GPU_FIGURES.values()}


def test_every_query_of_the_dashboard_names_an_exported_metric(
    api_client: Any, tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\btorchqueue_[a-z0-9_]+", e)}
    exported = _names(api_client.get("/metrics").text) | _worker_exported(tmp_path)
    assert named <= exported, sorted(named - exported)
    # Queues, throughput, latency, outcomes and GPU use each have a panel of their own.
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(set(titles)) == len(titles)
    for metric in ("torchqueue_queue_depth", "torchqueue_http_request_seconds_bucket",
                   "torchqueue_jobs", "torchqueue_gpu_utilization_ratio",
                   "torchqueue_worker_training_samples_total"):  # fmt: skip
        assert metric in named, metric
