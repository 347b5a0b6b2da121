"""``GET /metrics`` and a pool's backlog, as Prometheus and an autoscaler read them: a key
with the scope to read them, figures that change as jobs are submitted, and queue depths
that are the database's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from shared.db import keys
from shared.db.models import Job
from shared.db.session import session_scope
from shared.jobstate import JobState
from tests.helpers import unique


def _key(*scopes: str) -> dict[str, str]:
    with session_scope() as s:
        _, key = keys.create_key(s, unique("metrics"), list(scopes))
    return {"Authorization": f"Bearer {key}"}


def _scrape(client: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = client.get("/metrics", headers=_key("metrics:read"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def _value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def _train(client: Any, pool: str) -> dict[str, Any]:
    body = {"model_name": unique("m"), "family": "mlp", "dataset": {"builtin": "iris"},
            "resources": {"pool": pool}}  # fmt: skip
    made = client.post("/v1/jobs/train", json=body)
    assert made.status_code == 201, made.text
    job: dict[str, Any] = made.json()
    return job


def test_metrics_need_a_key_with_their_scope(api_client: Any) -> None:
    assert api_client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    refused = api_client.get("/metrics", headers=_key("jobs:read", "models:read"))
    assert refused.status_code == 403 and "metrics:read" in refused.json()["detail"]
    assert api_client.get("/metrics").status_code == 200  # admin


def test_the_figures_change_as_jobs_are_submitted(api_client: Any) -> None:
    pool = unique("p").replace("_", "-")[:30].lower()
    queue = f"train.{pool}.d1.m0"
    before = _scrape(api_client)
    first = _train(api_client, pool)
    _train(api_client, pool)
    api_client.get("/v1/jobs/00000000-no-such-job")
    api_client.get("/no/such/path")
    after = _scrape(api_client)

    assert _value(after, "torchqueue_queue_depth", queue=queue) == 2
    assert _value(after, "torchqueue_queue_oldest_seconds", queue=queue) > 0
    queued = ("torchqueue_jobs", "kind", "train", "state", "queued")
    got = _value(after, queued[0], kind="train", state="queued")
    assert got >= _value(before, queued[0], kind="train", state="queued") + 2
    posts = {"method": "POST", "route": "/v1/jobs/train", "status": "201"}
    assert _value(after, "torchqueue_http_requests_total", **posts) == (
        _value(before, "torchqueue_http_requests_total", **posts) + 2
    )
    assert _value(after, "torchqueue_http_request_seconds_count", **posts) >= 2
    # Ids and made-up paths do not make series of their own.
    missing = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
    assert _value(after, "torchqueue_http_requests_total", **missing) >= 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert _value(after, "torchqueue_http_requests_total", **unmatched) >= 1
    assert not any("00000000" in str(labels) for _, labels in after)

    api_client.post(f"/v1/jobs/{first['id']}/cancel")
    again = _scrape(api_client)
    assert _value(again, "torchqueue_queue_depth", queue=queue) == 1


def test_queue_depths_and_backlogs_are_the_databases_under_load(api_client: Any) -> None:
    pools = [unique("load").replace("_", "-")[:30].lower() for _ in range(3)]
    with ThreadPoolExecutor(8) as run:
        list(run.map(lambda i: _train(api_client, pools[i % 3]), range(24)))
    scraped = _scrape(api_client)
    with session_scope() as s:
        counts = dict(
            s.execute(
                sa.select(Job.queue, sa.func.count())
                .where(Job.state == JobState.queued)
                .group_by(Job.queue)
            ).all()
        )
    for pool in pools:
        queue = f"train.{pool}.d1.m0"
        assert counts[queue] == 8
        assert _value(scraped, "torchqueue_queue_depth", queue=queue) == 8
        backlog = api_client.get(f"/v1/pools/{pool}/backlog").json()
        assert backlog["pool"] == pool
        assert backlog["queued"] == 8 and backlog["queued_by_kind"] == {"train": 8, "predict": 0}
        assert backlog["running"] == 0 and backlog["oldest_queued_seconds"] > 0
    assert api_client.get("/v1/pools/Bad Pool/backlog").status_code == 422
