"""Webhooks end to end: a receiver on loopback hears every event once per subscription,
signed the Standard Webhooks way, hears it again after answering 500, and still hears it
when the sender and Redis were lost between the job's end and the send; URLs that would
reach internal services are refused; a key sees only its own subscriptions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from standardwebhooks.webhooks import Webhook as Verifier

from shared.db import keys
from shared.db.session import session_scope
from shared.processes import free_port
from tests.fleet import Fleet, wait
from tests.helpers import unique


class Receiver:
    """An HTTP server on loopback that records what it is sent, and answers 500 to the
    first ``fail_first`` requests of a path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[str, dict[str, str], str]] = []
        self.fail_first: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                receiver.got.append((self.path, dict(self.headers.items()), body))
                left = receiver.fail_first.get(self.path, 0)
                receiver.fail_first[self.path] = max(left - 1, 0)
                self.send_response(500 if left else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, path: str, secret: str) -> list[dict[str, Any]]:
        """What ``path`` was sent, each checked against its signature."""
        out = []
        for got_path, headers, body in self.got:
            if got_path == path:
                lower = {k.lower(): v for k, v in headers.items()}
                out.append(Verifier(secret).verify(body, lower))
        return out

    def wait_for(self, path: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(p == path for p, _, _ in self.got) < count:
            assert time.monotonic() < deadline, f"{path}: {len(self.got)} requests in all"
            time.sleep(0.1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _subscribe(client: Any, url: str, events: list[str], headers: Any = None) -> dict[str, Any]:
    made = client.post("/v1/webhooks", json={"url": url, "events": events}, headers=headers)
    assert made.status_code == 201, made.text
    hook: dict[str, Any] = made.json()
    assert hook["secret"].startswith("whsec_")
    return hook


def _train(client: Any, **extra: Any) -> dict[str, Any]:
    body = {"model_name": unique("hooked"), "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": 2}, **extra}  # fmt: skip
    job: dict[str, Any] = client.post("/v1/jobs/train", json=body).json()
    return job


@pytest.mark.slow
def test_every_event_once_per_subscription_signed_and_again_after_a_500(
    api_client: Any, fleet: Fleet, receiver: Receiver
) -> None:
    fleet.worker()
    fleet.worker("--cpu", "--queues", "webhooks", name="webhooks@")
    fleet.start("reaper")
    every = _subscribe(api_client, receiver.url("/all"),
                       ["job.succeeded", "job.cancelled", "model.version.created"])  # fmt: skip
    flaky = _subscribe(api_client, receiver.url("/flaky"), ["job.succeeded"])
    receiver.fail_first["/flaky"] = 1

    job = _train(api_client)
    called = _train(api_client, callback_url=receiver.url("/callback"))
    assert set(called["callback"]) == {"webhook_id", "secret"}
    assert wait(api_client, job["id"])["state"] == "succeeded"
    assert wait(api_client, called["id"])["state"] == "succeeded"
    assert api_client.get(f"/v1/jobs/{called['id']}").json()["callback"] is None  # shown once
    queued = _train(api_client, resources={"pool": "nobody"})
    api_client.post(f"/v1/jobs/{queued['id']}/cancel")
    receiver.wait_for("/all", 5)
    receiver.wait_for("/flaky", 3)
    time.sleep(1.5)  # nothing more comes

    heard = receiver.events("/all", every["secret"])
    # Both trained jobs' ends and versions, and the cancelled one's end: once each.
    pairs = sorted((e["type"], e["data"].get("job_id")) for e in heard)
    assert pairs == sorted([
        ("job.succeeded", job["id"]), ("job.succeeded", called["id"]),
        ("model.version.created", job["id"]), ("model.version.created", called["id"]),
        ("job.cancelled", queued["id"]),
    ])  # fmt: skip
    # Two jobs succeeded: the first request was answered 500, and its delivery (the same
    # webhook-id) came again; the other came once.
    retried = receiver.events("/flaky", flaky["secret"])
    assert {e["data"]["job_id"] for e in retried} == {job["id"], called["id"]}
    ids = [h["webhook-id"] for p, h, _ in receiver.got if p == "/flaky"]
    assert len(ids) == 3 and len(set(ids)) == 2
    deliveries = api_client.get(f"/v1/webhooks/{flaky['id']}/deliveries").json()["items"]
    assert sorted((d["state"], d["attempts"], d["last_status"]) for d in deliveries) == [
        ("delivered", 1, 200), ("delivered", 2, 200)
    ]  # fmt: skip
    # A job's callback hears that job's end alone, signed with the secret it was given.
    receiver.wait_for("/callback", 1)
    ended = receiver.events("/callback", called["callback"]["secret"])
    assert [(e["type"], e["data"]["job_id"]) for e in ended] == [("job.succeeded", called["id"])]
    # A signature made with another secret does not verify.
    with pytest.raises(Exception, match="signature"):
        receiver.events("/flaky", every["secret"])


@pytest.mark.slow
def test_a_delivery_survives_losing_its_sender_and_redis(
    api_client: Any, fleet: Fleet, receiver: Receiver
) -> None:
    trainer = fleet.worker()
    hook = _subscribe(api_client, receiver.url("/durable"), ["job.succeeded"])
    job = _train(api_client)
    assert wait(api_client, job["id"])["state"] == "succeeded"
    # The event was recorded with the job's end; its task waits in Redis for a webhook
    # worker that is not running. Both go: the worker that ended the job, and Redis's data.
    fleet.kill9(trainer)
    redis.Redis.from_url(fleet.redis_url).flushall()
    pending = api_client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"]
    assert [d["state"] for d in pending] == ["pending"]

    fleet.start("reaper")
    fleet.worker("--cpu", "--queues", "webhooks", name="webhooks@")
    receiver.wait_for("/durable", 1)
    time.sleep(1.5)
    heard = receiver.events("/durable", hook["secret"])
    assert [e["data"]["job_id"] for e in heard] == [job["id"]]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.0.0.7/hook", "internal address"),
        ("http://169.254.169.254/latest/meta-data", "internal address"),
        ("http://[::1]:8080/hook", "internal address"),
        ("http://user:secret@127.0.0.1/hook", "no credentials"),
        ("ftp://127.0.0.1/hook", "not ftp"),
        ("not a url", "not none"),
    ],
)
def test_urls_that_reach_internal_services_are_refused(
    api_client: Any, url: str, words: str
) -> None:
    refused = api_client.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "url"
    assert words in refused.json()["detail"]


def test_a_callback_url_is_checked_as_a_subscription_is(api_client: Any) -> None:
    body = {"model_name": unique("cb"), "family": "mlp", "dataset": {"builtin": "iris"},
            "callback_url": "http://10.1.2.3/hook"}  # fmt: skip
    refused = api_client.post("/v1/jobs/train", json=body)
    assert refused.status_code == 422
    assert refused.json()["field"] == "callback_url"
    assert "internal address" in refused.json()["detail"]


def test_https_only_unless_the_operator_allows_http(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_WEBHOOK_ALLOW_HTTP", "false")
    refused = api_client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}
    )
    assert refused.status_code == 422
    assert "TORCHQUEUE_WEBHOOK_ALLOW_HTTP allows http" in refused.json()["detail"]


def test_a_key_manages_only_its_own_subscriptions(api_client: Any) -> None:
    with session_scope() as s:
        _, alice = keys.create_key(s, unique("alice"), ["jobs:submit", "jobs:read"])
        _, bob = keys.create_key(s, unique("bob"), ["jobs:submit", "jobs:read"])
    as_alice, as_bob = ({"Authorization": f"Bearer {k}"} for k in (alice, bob))
    hook = _subscribe(api_client, "http://127.0.0.1:9/alice", ["job.failed"], as_alice)
    assert api_client.get(f"/v1/webhooks/{hook['id']}", headers=as_bob).status_code == 404
    assert api_client.delete(f"/v1/webhooks/{hook['id']}", headers=as_bob).status_code == 404
    assert hook["id"] not in [
        h["id"] for h in api_client.get("/v1/webhooks", headers=as_bob).json()
    ]
    mine = api_client.get("/v1/webhooks", headers=as_alice).json()
    assert [h["id"] for h in mine] == [hook["id"]] and "secret" not in mine[0]
    assert api_client.delete(f"/v1/webhooks/{hook['id']}", headers=as_alice).status_code == 204
