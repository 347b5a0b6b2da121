"""Job submissions in the API process: group commit.

Submissions that come while a group is being committed gather, and go together in the
next: one transaction (one multi-row INSERT of the jobs and one of their events,
``jobs.create_jobs``), one commit, then their messages in one pipelined publish
(``enqueue.send_jobs``). A lone submission goes at once, so it never waits for company;
under load a group holds every submission that came in while the last one was
committed. Two threads: one commits a group while the other sends the one before.

A caller hears of its job only once it is committed and its message sent, or recorded as
waiting to be sent (the reaper sends it): a process killed at any moment loses no job it
answered 201 for. A group that fails as a whole for a reason of the database's (it cannot
be reached; the commit was cut) fails every submission in it, each as it would alone;
one that fails otherwise is tried again one submission at a time, so that one bad
submission cannot fail its neighbours. Submissions with an Idempotency-Key or a
callback_url do not come here: they take the route's own path, one transaction each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db import fleet, jobs
from shared.db.session import UNREACHABLE, session_scope
from shared.enqueue import send_jobs
from shared.routing import waiting_reason
from shared.schemas import JobOut

log = logging.getLogger(__name__)

# The most submissions in one group: a bound on one transaction's size and on the wait of
# the last of them.
MAX_GROUP = 256
# How long the queues that online workers serve are trusted before they are read again;
# a queue they did not serve is looked for again after the shorter time, so that a
# worker that just came online is seen at once.
SERVED_TTL_SECONDS = 2.0
UNSERVED_TTL_SECONDS = 0.5

# What a submission's ``make`` returns: ``jobs.create_job``'s keywords for its job, and
# its model family, which chooses the waiting message of a plugin's family.
Made = tuple[dict[str, Any], str | None]


@dataclass
class Submission:
    """One job to record: ``make`` builds it in the group's transaction (and may write
    there, as an inline data set's version is), raising what the caller should hear."""

    make: Callable[[Session], Made]
    future: asyncio.Future[JobOut]
    settled: bool = False

    def settle(self, job: JobOut | None, error: BaseException | None = None) -> None:
        """Answer the caller (once), from whichever thread."""
        if self.settled:
            return
        self.settled = True
        # RuntimeError: its event loop has closed, and nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self.future.get_loop().call_soon_threadsafe(_settle, self.future, job, error)


def _settle(
    future: asyncio.Future[JobOut], job: JobOut | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif job is not None:
        future.set_result(job)


class Submitter:
    def __init__(self) -> None:
        self._incoming: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._outgoing: queue.SimpleQueue[list[tuple[Submission, JobOut]] | None] = (
            queue.SimpleQueue()
        )
        self._served: set[str] = set()
        self._served_at = -float("inf")
        self._committer = threading.Thread(target=self._commit_loop, name="job-committer")
        self._sender = threading.Thread(target=self._send_loop, name="job-sender")
        # Daemons: a process that exits mid-group loses nothing it answered for.
        self._committer.daemon = self._sender.daemon = True
        self._committer.start()
        self._sender.start()

    async def submit(self, make: Callable[[Session], Made]) -> JobOut:
        """Record a job and send it; its ``JobOut`` once both are done (or it waits to be
        sent), or what ``make``, the database or the commit raised."""
        future: asyncio.Future[JobOut] = asyncio.get_running_loop().create_future()
        self._incoming.put(Submission(make, future))
        return await future

    def close(self) -> None:
        self._incoming.put(None)
        self._committer.join(10)
        self._outgoing.put(None)
        self._sender.join(10)

    # --- the committer's thread ---------------------------------------------------------

    def _commit_loop(self) -> None:
        while (first := self._incoming.get()) is not None:
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    more = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._incoming.put(None)  # seen by the loop, after this group
                    break
                group.append(more)
            self._commit(group)

    def _commit(self, group: list[Submission]) -> None:
        try:
            made = self._record(group)
        except Exception as exc:
            if len(group) > 1 and not isinstance(exc, UNREACHABLE):
                log.warning("a group of %d submissions failed (%s); one at a time", len(group), exc)
                for submission in group:
                    if not submission.settled:
                        self._commit([submission])
                return
            for submission in group:
                submission.settle(None, exc)
            return
        if made:
            self._outgoing.put(made)

    def _record(self, group: list[Submission]) -> list[tuple[Submission, JobOut]]:
        """The group's jobs in one transaction, committed; a submission whose ``make``
        refused it is answered with why, and left out."""
        kept: list[Submission] = []
        creates: list[dict[str, Any]] = []
        with session_scope() as session:
            families: list[str | None] = []
            for submission in group:
                if submission.settled:
                    continue
                try:
                    create, family = submission.make(session)
                except UNREACHABLE:
                    raise
                except Exception as exc:
                    submission.settle(None, exc)
                    continue
                kept.append(submission)
                creates.append(create)
                families.append(family)
            served = self._served_queues(session, {c["queue"] for c in creates})
            for create, family in zip(creates, families, strict=True):
                if (why := waiting_reason(create["queue"], served, family)) is not None:
                    create["message"] = why
            made = jobs.create_jobs(session, creates)
        return list(zip(kept, made, strict=True))

    def _served_queues(self, session: Session, wanted: set[str]) -> set[str]:
        age = time.monotonic() - self._served_at
        if age > SERVED_TTL_SECONDS or (age > UNSERVED_TTL_SECONDS and wanted - self._served):
            offline_after = get_settings().worker_offline_after_seconds
            self._served = fleet.served_queues(session, offline_after)
            self._served_at = time.monotonic()
        return self._served

    # --- the sender's thread ------------------------------------------------------------

    def _send_loop(self) -> None:
        while (made := self._outgoing.get()) is not None:
            try:
                unsent = {job.id: why for job, why in send_jobs([job for _, job in made])}
                if unsent:
                    self._note_unsent(unsent)
            except Exception:  # committed: the reaper sends whatever this left unsent
                log.exception("sending %d committed jobs failed", len(made))
                unsent = {}
            for submission, job in made:
                if (why := unsent.get(job.id)) is not None:
                    job = job.model_copy(update={"message": f"waiting to be sent: {why.detail}"})
                submission.settle(job)

    def _note_unsent(self, unsent: dict[str, Any]) -> None:
        """Each unsent job's message says it waits to be sent (the reaper sends it)."""
        try:
            with session_scope() as session:
                for job_id, why in unsent.items():
                    jobs.set_message(session, job_id, f"waiting to be sent: {why.detail}")
        except UNREACHABLE as exc:  # the jobs are recorded all the same
            log.warning("could not note %d jobs waiting to be sent: %s", len(unsent), exc)


@cache
def submitter() -> Submitter:
    """The process's submitter, started on first use; its threads live as long as the
    process, whichever app and event loop hand it submissions."""
    return Submitter()
