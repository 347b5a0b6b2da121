"""The reaper: takes back jobs whose workers died, and re-sends jobs the broker lost.

Several may run (one per machine, say); a lock in the database lets one act at a time.
Every action is a conditional UPDATE, so even two reapers acting at once would be safe.

- A running job whose lease expired goes back to ``queued`` (it resumes from its
  checkpoint) and is sent again; after ``max_attempts`` it fails with the reason; a
  ``cancelling`` one becomes ``cancelled``.
- A job queued for longer than ``resend_after_seconds`` whose message the broker no
  longer holds (never sent, lost in a Redis restart, or delivered to a worker that died
  before it claimed the job) is sent again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import Any

import redis

from shared.config import get_settings
from shared.constants import JOBS_HEADER, QUEUE_PREDICT, QUEUE_TRAIN
from shared.db import fleet, job_reads, jobs, locks
from shared.db.session import session_scope
from shared.direct_batches import give_back_orphans, taken_list
from shared.enqueue import send_job
from shared.errors import Unavailable
from shared.schemas import JobOut

# The Redis transport's delivered, unacknowledged messages: tag → message, tag → when.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"

log = logging.getLogger("torchqueue.reaper")
LOCK = "reaper"


def _job_ids(raw: bytes | str, carried: bool = True) -> list[str]:
    """The jobs a message stands for: its task id, and with ``carried`` the jobs of a
    batch of sync predictions."""
    try:
        message: Any = json.loads(raw)
    except ValueError:
        return []
    if isinstance(message, list):  # an unacknowledged delivery: [message, exchange, key]
        message = message[0] if message else {}
    if not isinstance(message, dict):
        return []
    headers = message.get("headers") or {}
    ids = [headers.get("id"), *(headers.get(JOBS_HEADER) or [] if carried else [])]
    return [str(i) for i in ids if i]


def broker_job_ids(client: redis.Redis, delivered_within: float) -> set[str]:
    """The job ids of every message the broker holds: waiting in a queue (any priority),
    or delivered to a worker within the last ``delivered_within`` seconds and not yet
    acknowledged. A delivered message whose job is still queued after that long was taken
    by a worker that died before it claimed the job (it stays unacknowledged for the
    visibility timeout, a week). A batch of sync predictions counts only while it waits:
    delivered, it is done in moments."""
    ids: set[str] = set()
    for queue in (QUEUE_TRAIN, QUEUE_PREDICT):
        for key in client.scan_iter(match=f"{queue}*", _type="list"):
            for raw in client.lrange(key, 0, -1):
                ids.update(_job_ids(raw))
    recent = set(client.zrangebyscore(UNACKED_INDEX, time.time() - delivered_within, "+inf"))
    for tag, raw in client.hscan_iter(UNACKED):
        if tag in recent:
            ids.update(_job_ids(raw, carried=False))
    return ids


def newest_first(found: list[JobOut]) -> list[JobOut]:
    """Each job sent again goes in front of the one sent before it: sent newest first,
    they keep the order in which they were submitted."""
    return sorted(found, key=lambda job: job.created_at, reverse=True)


class Reaper:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"reaper@{socket.gethostname()}:{os.getpid()}"
        self.settings = get_settings()

    def _send(self, job: JobOut) -> bool:
        """Send a job again: to the front of its priority level, ahead of the jobs queued
        after it (``shared.transport``)."""
        try:
            send_job(job, first=True)
        except Unavailable as exc:
            log.warning("job %s stays queued: %s", job.id, exc.detail)
            return False
        return True

    def run_once(self) -> Counter[str]:
        """One pass; returns what it did (empty when another reaper holds the lock)."""
        s = self.settings
        done: Counter[str] = Counter()
        with session_scope() as db:
            if not locks.acquire_lock(db, LOCK, self.name, 3 * s.reaper_interval_seconds):
                return done
            expired = job_reads.expired_leases(db, s.lease_seconds)
        for job in newest_first(expired):
            with session_scope() as db:
                action = jobs.reap(db, job, s.lease_seconds)
            done[action] += 1
            if action == "requeued":
                self._send(job)
            if action != "skipped":
                log.info("job %s: lease of %s expired: %s", job.id, job.worker, action)
        done["resent"] += self._resend_lost()
        done["batches sent again"] += self._requeue_taken()
        done["sweep trials queued"] += self._advance_sweeps()
        done["webhook deliveries sent"] += self._send_due_deliveries()
        return done

    def _send_due_deliveries(self) -> int:
        """Webhook deliveries that are due (a retry's time has come, or the send after
        their event's commit was lost): their tasks again. An attempt is claimed in the
        database, so a delivery whose task is still queued is not sent twice."""
        from shared.db import webhooks
        from shared.enqueue import send_delivery

        with session_scope() as db:
            due = webhooks.due(db, self.settings.resend_after_seconds)
        sent = 0
        for delivery_id in due:
            try:
                send_delivery(delivery_id)
                sent += 1
            except Unavailable as exc:
                log.warning("cannot send webhook deliveries (%s); %d wait", exc.detail, len(due))
                break
        return sent

    def _advance_sweeps(self) -> int:
        """Every running sweep one step on: its ended trials recorded, the next ones asked
        for. Workers do this as each trial ends; this pass repairs what a process killed
        in between left undone."""
        from shared import sweep_driver
        from shared.db import sweeps

        with session_scope() as db:
            running = sweeps.running_ids(db)
        return sum(len(sweep_driver.advance(sweep_id)) for sweep_id in running)

    def _requeue_taken(self) -> int:
        """Batches of sync predictions that a worker took from a direct list and had not
        finished recording when it went offline: back at the front of their lists."""
        with session_scope() as db:
            online = {
                taken_list(w.name, w.pid)
                for w in fleet.list_workers(db, self.settings.worker_offline_after_seconds)
                if w.state == "online"
            }
        try:
            client = redis.Redis.from_url(self.settings.broker_url, socket_timeout=5)
            try:
                return give_back_orphans(client, online)
            finally:
                client.close()
        except redis.RedisError as exc:
            log.warning("cannot read the broker (%s); taken batches wait", exc)
            return 0

    def _resend_lost(self) -> int:
        with session_scope() as db:
            stale = job_reads.stale_queued(db, self.settings.resend_after_seconds)
        if not stale:
            return 0
        try:
            client = redis.Redis.from_url(self.settings.broker_url, socket_timeout=5)
            held = broker_job_ids(client, self.settings.resend_after_seconds)
            client.close()
        except redis.RedisError as exc:
            log.warning("cannot read the broker (%s); %d queued jobs wait", exc, len(stale))
            return 0
        resent = 0
        for job in newest_first(stale):
            message = None
            if job.id not in held:
                if not self._send(job):
                    continue
                message = "sent again: the broker held no message for it"
                resent += 1
            with session_scope() as db:
                jobs.mark_sent(db, job.id, message)
        return resent

    def run(self, stop: threading.Event) -> None:
        log.info(
            "%s: leases of %.0f s, every %.1f s",
            self.name,
            self.settings.lease_seconds,
            self.settings.reaper_interval_seconds,
        )
        while not stop.is_set():
            try:
                done = self.run_once()
                if any(done.values()):
                    log.info("%s", dict(done))
            except Exception:  # a database blip must not end the reaper
                log.exception("reaper pass failed; trying again")
            stop.wait(self.settings.reaper_interval_seconds)
        with session_scope() as db:
            locks.release_lock(db, LOCK, self.name)
