"""Told over Redis pub/sub, on the broker's Redis.

Job ends: a worker publishes on ``job-done:<id>`` when a job ends, and an API request
waiting for that job wakes at once instead of polling the database. The database stays
the record: a waiter that misses a message (published before it subscribed, or lost)
still reads the job's state, and polls slowly meanwhile.

Answers of sync predictions: a worker publishes the answers of a batch on the reply
channel of the API process that waits for them (``encode_reply``; that process's
``api.batcher.Replies`` reads them with ``decode_reply``). They carry the final response
bodies, so the API passes them on without reading or re-encoding them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import cache

import redis
import redis.asyncio as aioredis

from shared.config import get_settings
from shared.constants import JOB_DONE_CHANNEL

log = logging.getLogger(__name__)
# Between two reads of the database while waiting, should a message never come.
FALLBACK_POLL_SECONDS = 1.0


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def publish(channel: str, data: bytes) -> None:
    """Publish on the broker's Redis; raises ``redis.RedisError``."""
    _client(get_settings().broker_url).publish(channel, data)


# --- answers: a JSON line of (job id, HTTP status, body length), then the bodies -------


def encode_reply(answers: list[tuple[str, int, bytes]]) -> bytes:
    head = json.dumps([[job_id, status, len(body)] for job_id, status, body in answers])
    return b"".join([head.encode(), b"\n", *(body for _, _, body in answers)])


def decode_reply(data: bytes) -> list[tuple[str, int, bytes]]:
    head, _, rest = data.partition(b"\n")
    answers, offset = [], 0
    for job_id, status, length in json.loads(head):
        answers.append((str(job_id), int(status), rest[offset : offset + length]))
        offset += length
    return answers


# --- job ends --------------------------------------------------------------------------


def job_done(job_id: str) -> None:
    """Tell whoever waits for ``job_id`` that it ended (best effort)."""
    try:
        publish(JOB_DONE_CHANNEL + job_id, b"1")
    except redis.RedisError as exc:
        log.debug("could not publish the end of job %s: %s", job_id, exc)


async def wait_until_done(
    job_id: str, is_done: Callable[[], Awaitable[bool]], timeout: float
) -> bool:
    """Wait until ``is_done()`` says the job ended, or ``timeout`` seconds pass; wake on
    the job's message, and ask ``is_done`` once after subscribing (the job may have
    ended before) and then every FALLBACK_POLL_SECONDS."""
    deadline = time.monotonic() + timeout
    client = aioredis.Redis.from_url(get_settings().broker_url, socket_connect_timeout=2)
    pubsub = client.pubsub()
    listening = True
    try:
        try:
            await pubsub.subscribe(JOB_DONE_CHANNEL + job_id)
        except (redis.RedisError, OSError) as exc:
            log.debug("waiting for job %s without notifications: %s", job_id, exc)
            listening = False
        while not await is_done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause = min(left, FALLBACK_POLL_SECONDS)
            if not listening:
                await asyncio.sleep(pause)
                continue
            try:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=pause)
            except (redis.RedisError, OSError):
                listening = False
        return True
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
