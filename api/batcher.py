"""Sync predictions in the API process: dynamic batching before the broker.

Concurrent requests for the same model, version and pool are sent as one batch message
(a ``shared.schemas.ServeBatch``), so that a burst of callers costs the broker and the
worker one message and one forward pass, not one each: pushed from the event loop onto
the queue's direct list when a prediction worker consumes it (``workers.direct``), else
sent as a Celery task (``shared.enqueue.send_batch``, from a thread of its own). A request
for a model with fewer than ``IN_FLIGHT`` batches on their way is sent at once (an idle
model adds no wait); otherwise requests gather for at most ``max_wait_ms`` or until they
fill ``max_batch_size`` rows, and go at once when a batch comes back. The
worker resolves ``latest`` or an alias when it runs the batch, and checks every request's
inputs against that version.

The answers come back on this process's own Redis channel (``Replies``; their codec is
``shared.notify``'s), one subscription for all requests, and carry the response bodies
as they will be sent: nothing on a request's path reads the database, and nothing here
re-encodes an output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool

from api.metrics import metrics, model_label
from shared.config import get_settings
from shared.constants import REPLY_CHANNEL
from shared.db import fleet, model_registry
from shared.db.session import read_scope
from shared.enqueue import direct_message, send_batch
from shared.errors import Unavailable
from shared.notify import decode_reply
from shared.routing import direct_queue, predict_queue, waiting_reason
from shared.schemas import BatchingIn, ServeBatch, ServeItem

log = logging.getLogger(__name__)
# How long the list of queues that online workers serve, and a model's own batching
# settings, are trusted before they are read again (in the background).
SERVED_TTL_SECONDS = 2.0
KNOBS_TTL_SECONDS = 5.0
# Batches of one model on their way at once before requests gather: two, so that the
# worker runs one while the answers of the other travel back and its callers send again.
IN_FLIGHT = 2
# Models whose batching settings are kept; the least recently added go first.
MAX_MODELS_KNOWN = 1024


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
    item: ServeItem
    future: asyncio.Future[Outcome]


@dataclass
class _Gathering:
    """The requests of one (model, version, pool) waiting to be sent, and the number of
    its batches on their way."""

    items: list[_Request] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None
    in_flight: int = 0
    # The version's family, which chooses the queue (a plugin's family has its own).
    family: str | None = None


class Sender:
    """Publishes batch messages from a thread of its own: the event loop never waits on
    the broker, and a batch costs one hand-off, not a trip through a thread pool."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="batch-sender", daemon=True)
        self._thread.start()

    def send(self, batch: ServeBatch) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((batch, future))
        return future

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            batch, future = job
            error = None
            try:
                send_batch(batch, uuid.uuid4().hex)
            except Exception as exc:
                error = exc
            future.get_loop().call_soon_threadsafe(_settle, future, error)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class _Fresh:
    """A value read from the database in a thread, trusted for ``ttl`` seconds, then
    read again in the background while the old value is used."""

    def __init__(self, read: Callable[[], Any], ttl: float) -> None:
        self.read, self.ttl = read, ttl
        self.value: Any = None
        self.at = -float("inf")
        self._reading: asyncio.Task[None] | None = None

    async def get(self, within: float | None = None) -> Any:
        """The value; read now (and waited for) if it is older than ``within`` seconds
        or was never read; read again in the background if older than the ttl."""
        age = time.monotonic() - self.at
        if self._reading is None and age > min(self.ttl, within or self.ttl):
            self._reading = asyncio.create_task(self._refresh())
        if self._reading is not None and (self.value is None or (within and age > within)):
            await asyncio.shield(self._reading)
        return self.value

    async def _refresh(self) -> None:
        try:
            self.value = await run_in_threadpool(self.read)
            self.at = time.monotonic()
        except Exception as exc:  # the old value stays; the next request tries again
            log.warning("could not read the database: %s", exc)
        finally:
            self._reading = None


class Batcher:
    def __init__(self) -> None:
        self.replies = Replies()
        self.sender = Sender()
        self._keys: dict[tuple[str, str, str], _Gathering] = {}
        self._knobs: dict[str, _Fresh] = {}
        self._served = _Fresh(_served_queues, SERVED_TTL_SECONDS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis: aioredis.Redis | None = None

    async def limits(self, model: str, version: str = "latest") -> tuple[int, float, str | None]:
        """(max rows per batch, max wait in ms) for a model: its own, else the global;
        and the family of its ``version`` (None while unknown)."""
        settings = get_settings()
        if model not in self._knobs:
            if len(self._knobs) >= MAX_MODELS_KNOWN:  # names that callers made up, too
                del self._knobs[next(iter(self._knobs))]
            self._knobs[model] = _Fresh(lambda: _serving_of(model), KNOBS_TTL_SECONDS)
        serving: tuple[BatchingIn, dict[str, str]] | None = await self._knobs[model].get()
        own, families = serving or (BatchingIn(), {})
        rows = own.max_batch_size or settings.max_batch_size
        wait = own.max_wait_ms if own.max_wait_ms is not None else settings.max_wait_ms
        return rows, wait, families.get(version)

    def forget_limits(self, model: str) -> None:
        self._knobs.pop(model, None)

    async def submit(
        self, model: str, version: int | str, pool: str, item: ServeItem, rows: int
    ) -> asyncio.Future[Outcome]:
        """Queue a request for its batch; the future holds its outcome."""
        await self.replies.start()
        max_rows, wait_ms, family = await self.limits(model, str(version))
        key = (model, str(version), pool)
        gathering = self._keys.setdefault(key, _Gathering())
        gathering.family = family
        if gathering.items and gathering.rows + rows > max_rows:
            self._flush(key)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        gathering.items.append(_Request(item, future))
        gathering.rows += rows
        if gathering.rows >= max_rows or gathering.in_flight < IN_FLIGHT:
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
        rows, model = gathering.rows, key[0]
        items, gathering.items, gathering.rows = gathering.items, [], 0
        gathering.in_flight += 1
        metrics().batch_rows.labels(model_label(model)).observe(rows)
        left = len(items)

        def one_done(_: asyncio.Future[Outcome]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._batch_done(key)

        for request in items:
            request.future.add_done_callback(one_done)
        task = asyncio.create_task(self._dispatch(key, items, gathering.family))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _batch_done(self, key: tuple[str, str, str]) -> None:
        gathering = self._keys[key]
        gathering.in_flight -= 1
        if gathering.items and gathering.in_flight < IN_FLIGHT:
            self._flush(key)
        elif not gathering.items and gathering.in_flight == 0:
            del self._keys[key]

    async def _dispatch(
        self, key: tuple[str, str, str], items: list[_Request], family: str | None
    ) -> None:
        model, version, pool = key
        ready = [r for r in items if not r.future.done()]  # a caller may have gone
        if not ready:
            return
        queue_name = predict_queue(pool, family)
        batch = ServeBatch(
            model=model,
            version=int(version) if version.isdigit() else version,
            queue=queue_name,
            reply=self.replies.channel,
            items=[r.item for r in ready],
        )
        for request in ready:
            self.replies.waiting[request.item.id] = request.future
        served = await self._served.get() or ()
        try:
            if (direct := direct_queue(queue_name)) in served:
                await self._push(direct, direct_message(batch, uuid.uuid4().hex))
                return
            await self.sender.send(batch)
        except Unavailable as exc:
            self._queued(ready, f"waiting to be sent: {exc.detail}")
            return
        if waiting_reason(queue_name, served) is None:
            return
        served = await self._served.get(within=0.5) or ()  # make sure
        why = waiting_reason(queue_name, served, family)
        if why is not None:
            self._queued(ready, why)

    async def _push(self, direct: str, message: bytes) -> None:
        """Into a direct list, from the event loop: one command, no thread hand-off."""
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                get_settings().broker_url, socket_connect_timeout=2, socket_timeout=2
            )
        try:
            await self._redis.lpush(direct, message)
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"the broker cannot be reached: {exc}") from None

    def _queued(self, ready: list[_Request], why: str) -> None:
        for request in ready:
            self.replies.waiting.pop(request.item.id, None)
            if not request.future.done():
                request.future.set_result(Outcome(202, message=why))

    def abandon(self, item: ServeItem, future: asyncio.Future[Outcome]) -> None:
        """Its caller stops waiting: its answer, if it comes, is not needed here."""
        self.replies.waiting.pop(item.id, None)
        future.cancel()

    async def close(self) -> None:
        for gathering in self._keys.values():
            if gathering.timer is not None:
                gathering.timer.cancel()
        self.sender.close()
        await self.replies.close()
        if self._redis is not None:
            await self._redis.aclose()


def _served_queues() -> set[str]:
    with read_scope() as s:
        return fleet.served_queues(s, get_settings().worker_offline_after_seconds)


def _serving_of(model: str) -> tuple[BatchingIn, dict[str, str]]:
    """A model's own batching settings, and the family of each of its versions."""
    with read_scope() as s:
        return model_registry.model_batching(s, model), model_registry.families_of(s, model)
