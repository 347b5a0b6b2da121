"""Sync predictions in the API process: dynamic batching before the broker.

Concurrent requests for the same model, version and pool are sent as one batch message
(``shared.serving``), so that a burst of callers costs the broker and the worker one
message and one forward pass, not one each. A request for a model with no batch on its
way is sent at once (an idle model adds no wait); while a batch is on its way, requests
gather for at most ``max_wait_ms`` or until they fill ``max_batch_size`` rows, and go
at once when the last batch comes back. ``latest`` is resolved, and the model's own
batching settings read, once per batch, when it is sent.

The answers come back on this process's own Redis channel, one subscription for all
requests, and carry the response bodies as they will be sent: nothing polls the
database, and nothing here re-encodes an output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool

from shared.config import get_settings
from shared.constants import REPLY_CHANNEL
from shared.db import registry, store
from shared.db.session import session_scope
from shared.errors import TorchqueueError, Unavailable
from shared.routing import predict_queue
from shared.schemas import BatchingIn, ModelVersionOut, Tensor, check_inputs, input_rows
from shared.serving import Batch, Item, decode_reply, send_batch

log = logging.getLogger(__name__)
# How long the list of queues that online workers serve is trusted.
SERVED_TTL_SECONDS = 2.0


@dataclass
class Outcome:
    """A request's end: the worker's answer (``status`` and ``body``, the response as
    sent), or 202 with the reason it is queued instead."""

    status: int
    body: bytes = b""
    message: str = ""


class Replies:
    """This process's reply channel: one subscription, and the requests waiting on it."""

    def __init__(self) -> None:
        self.channel = REPLY_CHANNEL + uuid.uuid4().hex
        self.waiting: dict[str, asyncio.Future[Outcome]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe, once; wait a little for it, so that the first answers are heard."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="replies")
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), 2.0)
            except TimeoutError:
                log.warning("not subscribed to %s yet: answers wait for the timeout", self.channel)

    async def _listen(self) -> None:
        pause = 0.2
        while True:
            client = aioredis.Redis.from_url(
                get_settings().broker_url, socket_connect_timeout=2, health_check_interval=30
            )
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._ready.set()
                pause = 0.2
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.warning("the reply channel dropped (%s); subscribing again", exc)
            finally:
                self._ready.clear()
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _deliver(self, data: bytes) -> None:
        try:
            answers = decode_reply(data)
        except (ValueError, TypeError) as exc:
            log.warning("an unreadable reply on %s: %s", self.channel, exc)
            return
        for job_id, status, body in answers:
            future = self.waiting.pop(job_id, None)
            if future is not None and not future.done():
                future.set_result(Outcome(status, body))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class _Request:
    item: Item
    inputs: list[Any] | Tensor  # as validated
    future: asyncio.Future[Outcome]


@dataclass
class _Gathering:
    """The requests of one (model, version, pool) waiting to be sent, and the number of
    its batches on their way."""

    items: list[_Request] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None
    in_flight: int = 0


class Batcher:
    def __init__(self) -> None:
        self.replies = Replies()
        self._keys: dict[tuple[str, str, str], _Gathering] = {}
        self._knobs: dict[str, BatchingIn] = {}
        self._served: tuple[float, set[str]] = (0.0, set())
        self._tasks: set[asyncio.Task[None]] = set()

    def limits(self, model: str) -> tuple[int, float]:
        """(max rows per batch, max wait in ms) for a model: its own, else the global."""
        settings = get_settings()
        own = self._knobs.get(model) or BatchingIn()
        rows = own.max_batch_size or settings.max_batch_size
        wait = own.max_wait_ms if own.max_wait_ms is not None else settings.max_wait_ms
        return rows, wait

    def forget_limits(self, model: str) -> None:
        self._knobs.pop(model, None)

    async def submit(
        self, model: str, version: int | str, pool: str, item: Item, inputs: list[Any] | Tensor
    ) -> asyncio.Future[Outcome]:
        """Queue a request for its batch; the future holds its outcome."""
        await self.replies.start()
        rows = input_rows(inputs)
        key = (model, str(version), pool)
        gathering = self._keys.setdefault(key, _Gathering())
        max_rows, wait_ms = self.limits(model)
        if gathering.items and gathering.rows + rows > max_rows:
            self._flush(key)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        gathering.items.append(_Request(item, inputs, future))
        gathering.rows += rows
        if gathering.rows >= max_rows or gathering.in_flight == 0:
            self._flush(key)
        elif gathering.timer is None:
            loop = asyncio.get_running_loop()
            gathering.timer = loop.call_later(wait_ms / 1000, self._flush, key)
        return future

    def _flush(self, key: tuple[str, str, str]) -> None:
        gathering = self._keys[key]
        if gathering.timer is not None:
            gathering.timer.cancel()
            gathering.timer = None
        if not gathering.items:
            return
        items, gathering.items, gathering.rows = gathering.items, [], 0
        gathering.in_flight += 1
        left = len(items)

        def one_done(_: asyncio.Future[Outcome]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._batch_done(key)

        for request in items:
            request.future.add_done_callback(one_done)
        task = asyncio.create_task(self._dispatch(key, items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _batch_done(self, key: tuple[str, str, str]) -> None:
        gathering = self._keys[key]
        gathering.in_flight -= 1
        if gathering.items and gathering.in_flight == 0:
            self._flush(key)
        elif not gathering.items and gathering.in_flight == 0:
            del self._keys[key]

    def _resolve(self, model: str, version: str) -> tuple[ModelVersionOut, BatchingIn, set[str]]:
        """In a thread: the version to run, the model's settings, the served queues."""
        at, served = self._served
        with session_scope() as s:
            target, knobs = store.serving_target(
                s, model, "latest" if version == "latest" else int(version)
            )
            if time.monotonic() - at > SERVED_TTL_SECONDS:
                served = registry.served_queues(s, get_settings().worker_offline_after_seconds)
                self._served = (time.monotonic(), served)
        return target, knobs, served

    async def _dispatch(self, key: tuple[str, str, str], items: list[_Request]) -> None:
        model, version, pool = key
        try:
            target, knobs, served = await run_in_threadpool(self._resolve, model, version)
        except Exception as exc:  # the route turns it into its response
            for request in items:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        self._knobs[model] = knobs
        ready = _checked(items, target.input_schema)
        if not ready:
            return
        queue = predict_queue(pool)
        batch = Batch(model, target.version, target.artifact_uri, target.sha256, queue,
                      self.replies.channel, [item for item, _ in ready])  # fmt: skip
        for item, future in ready:
            self.replies.waiting[item.id] = future
        try:
            await run_in_threadpool(send_batch, batch, uuid.uuid4().hex)
        except Unavailable as exc:
            self._queued(ready, f"waiting to be sent: {exc.detail}")
            return
        if queue not in served:
            self._queued(ready, f"waiting on queue {queue}: no online worker serves it")

    def _queued(self, ready: list[tuple[Item, asyncio.Future[Outcome]]], why: str) -> None:
        for item, future in ready:
            self.replies.waiting.pop(item.id, None)
            if not future.done():
                future.set_result(Outcome(202, message=why))

    def abandon(self, item: Item, future: asyncio.Future[Outcome]) -> None:
        """Its caller stops waiting: its answer, if it comes, is not needed here."""
        self.replies.waiting.pop(item.id, None)
        future.cancel()

    async def close(self) -> None:
        for gathering in self._keys.values():
            if gathering.timer is not None:
                gathering.timer.cancel()
        await self.replies.close()


def _checked(
    items: list[_Request], input_schema: dict[str, Any]
) -> list[tuple[Item, asyncio.Future[Outcome]]]:
    """The requests whose callers still wait and whose inputs fit the version; the
    others' futures end with the error."""
    ready = []
    for request in items:
        if request.future.done():  # its caller has gone
            continue
        try:
            check_inputs(request.inputs, input_schema)
        except TorchqueueError as exc:
            request.future.set_exception(exc)
            continue
        ready.append((request.item, request.future))
    return ready
