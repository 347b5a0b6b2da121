"""Batches of sync predictions taken straight from Redis, beside Celery, in a prediction
worker's own process: the API pushes a batch (``shared.enqueue.direct_message``) onto its
queue's direct list (``shared.routing.direct_queue``) and this worker's consumer moves it,
in one atomic command, onto a list of the worker's own (``DIRECT_TAKEN`` and its name),
runs it (``workers.batches.run_batch``), and takes it off that list only once the records
of its predictions are committed. A worker killed mid-batch thus leaves the batch on its
list, and the reaper puts it back on its queue (``shared.direct_batches``): nothing answered goes
unrecorded, and a caller still waiting gets its answer from the worker that runs it again
(a prediction already recorded is not recorded twice).

It costs a batch one Redis command each way, where a Celery message costs the consumer a
delivery, an acknowledgement and its bookkeeping. A worker consumes its direct lists only
when it runs predictions alone (Celery's solo pool, no forked children); it lists them
among its queues, and the API sends a batch this way only to a queue one of them serves.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Collection
from typing import Any

import redis

from shared.config import get_settings
from shared.direct_batches import give_back, taken_list
from shared.routing import direct_queue

log = logging.getLogger(__name__)
# How long a consumer blocks on an empty list before it looks whether it must stop.
BLOCK_SECONDS = 1


def _client() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().broker_url, socket_connect_timeout=2, socket_timeout=BLOCK_SECONDS + 5
    )


class DirectConsumer:
    """One thread per direct list; they share the worker's forward passes (one at a time:
    ``run_batch`` holds the worker's lock)."""

    def __init__(self, worker: str, queues: Collection[str]) -> None:
        self.worker = worker
        self.taken = taken_list(worker, os.getpid())
        self.lists = [direct_queue(q) for q in queues]
        self._stop = threading.Event()
        self._redis = _client()
        self._threads = [
            threading.Thread(target=self._run, args=(source,), name=f"direct {source}", daemon=True)
            for source in self.lists
        ]

    def start(self) -> None:
        """Consume; what an earlier process of this name and id left taken (a restarted
        container's worker is often process 1 again) goes back first."""
        try:
            give_back(self._redis, self.taken)
        except (redis.RedisError, OSError) as exc:  # the reaper gives it back later
            log.warning("could not look at %s: %s", self.taken, exc)
        for thread in self._threads:
            thread.start()

    def stop(self, **_: Any) -> None:
        """Take no more batches; wait for the one running (its records go to the result
        writer, which the worker's shutdown writes)."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(BLOCK_SECONDS + 30)

    def _run(self, source: str) -> None:
        pause = 0.2
        while not self._stop.is_set():
            try:
                raw = self._redis.blmove(source, self.taken, BLOCK_SECONDS, "RIGHT", "LEFT")
                pause = 0.2
            except (redis.RedisError, OSError) as exc:
                log.warning("cannot read %s (%s); trying again in %.1f s", source, exc, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)
                continue
            if raw is not None:
                self._one(raw if isinstance(raw, bytes) else raw.encode())

    def _one(self, raw: bytes) -> None:
        from workers.batches import decode_batch, run_batch

        try:
            message = json.loads(raw)
            batch_id = str(message["headers"]["id"])
            payload = message["batch"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("refused a direct message: not a batch of sync predictions (%s)", exc)
            self._done(raw)
            return
        batch = decode_batch(payload, batch_id)
        if batch is None:
            self._done(raw)
            return
        try:
            run_batch(batch, self.worker, after=lambda: self._done(raw))
        except Exception:  # the batch stays taken: the reaper sends it again
            log.exception("batch %s failed; it stays on %s for the reaper", batch_id, self.taken)

    def _done(self, raw: bytes) -> None:
        """The batch's records are committed: it is done."""
        try:
            self._redis.lrem(self.taken, 1, raw.decode())
        except (redis.RedisError, OSError) as exc:
            # It stays taken: run again when the reaper finds this worker gone, its
            # records already there (they are not written twice).
            log.warning("could not take a finished batch off %s: %s", self.taken, exc)
