"""The API's Prometheus metrics (prometheus-client), served at ``GET /metrics`` to a key
with the scope ``metrics:read``.

- ``torchqueue_http_requests_total`` and ``torchqueue_http_request_seconds``: every
  request by method, route (its template, ``/v1/jobs/{job_id}``, so that ids do not make
  series) and status.
- ``torchqueue_jobs``: jobs by kind and state, and ``torchqueue_queue_depth`` /
  ``torchqueue_queue_oldest_seconds``: queued jobs per queue and how long the oldest has
  waited. Read from the database (the record, not the broker) when scraped, by one
  grouped query each.
- ``torchqueue_predict_batch_rows`` and ``torchqueue_predict_seconds``: sync predictions'
  batch sizes and their callers' latency, by model.

The objects live in a registry of this module's own, made on first use; several apps in
one process (the tests make many) share it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latencies from a millisecond to a minute; batch sizes from one row to the batch limit.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _Database(Collector):
    """Jobs by kind and state, and the queues' depth and age, read when scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from shared.db import job_reads
        from shared.db.session import read_scope

        jobs = GaugeMetricFamily(
            "torchqueue_jobs", "jobs by kind and state", labels=["kind", "state"]
        )
        depth = GaugeMetricFamily(
            "torchqueue_queue_depth", "queued jobs per queue", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "torchqueue_queue_oldest_seconds",
            "how long the oldest queued job of a queue has waited",
            labels=["queue"],
        )
        with read_scope() as s:
            for kind, state, n in job_reads.counts_by_kind_and_state(s):
                jobs.add_metric([kind, state], n)
            for queue, n, waited in job_reads.queue_depths(s):
                depth.add_metric([queue], n)
                oldest.add_metric([queue], waited or 0.0)
        yield from (jobs, depth, oldest)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    batch_rows: Histogram
    predict_seconds: Histogram


@functools.cache
def metrics() -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    labels = ["method", "route", "status"]
    made = Metrics(
        registry=registry,
        requests=Counter("torchqueue_http_requests", "HTTP requests", labels, registry=registry),
        request_seconds=Histogram(
            "torchqueue_http_request_seconds",
            "HTTP request latency",
            labels,
            buckets=SECONDS,
            registry=registry,
        ),
        batch_rows=Histogram(
            "torchqueue_predict_batch_rows",
            "rows per sync-prediction batch sent",
            ["model"],
            buckets=ROWS,
            registry=registry,
        ),
        predict_seconds=Histogram(
            "torchqueue_predict_seconds",
            "a sync prediction's latency in the API, by model",
            ["model", "status"],
            buckets=SECONDS,
            registry=registry,
        ),
    )
    registry.register(_Database())
    return made


# Models a sync prediction was answered for: only these name a series (a caller can make
# up any name, and each would become one), at most this many.
MAX_MODEL_LABELS = 1000
_served: set[str] = set()


def model_label(model: str) -> str:
    return model if model in _served else "(other)"


def served(model: str) -> None:
    """``model`` answered a prediction: it exists, and may name its series."""
    if len(_served) < MAX_MODEL_LABELS:
        _served.add(model)


def _route(scope: Scope) -> str:
    """The route's template, once routing matched one; else a fixed label (404s of paths
    callers made up must not each become a series)."""
    route: Any = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request, by route and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            m = metrics()
            labels = (scope["method"], _route(scope), str(status))
            m.requests.labels(*labels).inc()
            m.request_seconds.labels(*labels).observe(time.perf_counter() - started)
