"""The Redis lists of batches of sync predictions sent straight to prediction workers
(``workers.direct``): the list a worker process keeps what it took in, and putting back
what a process that is gone had taken, at the front of its queue's list."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection

import redis

from shared.constants import DIRECT_TAKEN
from shared.routing import direct_queue

log = logging.getLogger(__name__)


def taken_list(worker: str, pid: int) -> str:
    """A worker process's own list: by name and process id, so that a worker started
    again under the same name does not take over what the one before it held."""
    return f"{DIRECT_TAKEN}{worker}:{pid}"


def give_back(client: redis.Redis, key: str) -> int:
    """Every batch on ``key`` back at the front of its queue's direct list, each in one
    transaction (it is on one list or the other, never both, never neither)."""
    moved = 0
    for raw in client.lrange(key, 0, -1):
        raw = raw.decode() if isinstance(raw, bytes) else raw
        try:
            queue = str(json.loads(raw)["batch"]["queue"])
        except (ValueError, KeyError, TypeError):
            log.error("dropped an unreadable batch from %s", key)
            client.lrem(key, 1, raw)
            continue
        with client.pipeline(transaction=True) as pipe:
            pipe.rpush(direct_queue(queue), raw)  # the end its consumers take first
            pipe.lrem(key, 1, raw)
            pipe.execute()
        moved += 1
    return moved


def give_back_orphans(client: redis.Redis, online: Collection[str]) -> int:
    """What worker processes no longer online (``online``: their ``taken_list`` names)
    had taken and not finished recording; returns how many batches went back."""
    moved = 0
    for key in client.scan_iter(match=DIRECT_TAKEN + "*", _type="list"):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name not in online:
            moved += give_back(client, name)
    return moved
