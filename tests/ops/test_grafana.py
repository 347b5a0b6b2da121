"""The Grafana dashboard shows what the API exports: every metric its queries name is one
that ``GET /metrics`` serves."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT

DASHBOARD = ROOT / "ops" / "grafana" / "torchqueue-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _exported(client: Any) -> set[str]:
    text = client.get("/metrics").text
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_every_query_of_the_dashboard_names_an_exported_metric(api_client: Any) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 9
    named = {m for e in exprs for m in re.findall(r"\btorchqueue_[a-z0-9_]+", e)}
    exported = _exported(api_client)
    assert named, exprs
    assert named <= exported, sorted(named - exported)
    # Each panel is one thing: queues, throughput, latency, outcomes.
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(set(titles)) == len(titles)
