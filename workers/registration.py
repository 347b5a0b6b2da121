"""A worker's row in the workers table: written as it starts, renewed from a thread of the
parent process while it runs, marked stopped as it ends."""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from importlib import metadata
from typing import Any

from shared.families import FamilyInfo

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    """Software versions, read without importing torch."""
    out = {"python": platform.python_version()}
    for package in ("torchqueue", "torch", "celery"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


class Registration:
    """The worker's row in the table of workers, renewed from a thread of the parent process."""

    def __init__(
        self,
        name: str,
        pool: str,
        queues: list[str],
        devices: list[Any],
        families: list[FamilyInfo] | None = None,
    ) -> None:
        self.families = families or []
        self.fields = {
            "name": name,
            "host": socket.gethostname(),
            "pool": pool,
            "queues": queues,
            "devices": devices,
            "versions": _versions(),
            "pid": os.getpid(),
            "families": sorted(f.name for f in self.families),
        }
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)

    def __enter__(self) -> Registration:
        from shared.db import family_catalogue, fleet
        from shared.db.session import session_scope

        with session_scope() as s:
            fleet.register(s, **self.fields)
            family_catalogue.report(s, str(self.fields["name"]), self.families)
        self._thread.start()
        return self

    def _run(self) -> None:
        from shared.config import get_settings
        from shared.db import fleet
        from shared.db.session import session_scope

        while not self._done.wait(get_settings().worker_heartbeat_seconds):
            try:
                with session_scope() as s:
                    fleet.seen(s, str(self.fields["name"]))
            except Exception as exc:  # a database blip: try again next beat
                log.warning("could not renew the worker's registration: %s", exc)

    def __exit__(self, *_: object) -> None:
        from shared.db import fleet
        from shared.db.session import session_scope

        self._done.set()
        self._thread.join(5)
        try:
            with session_scope() as s:
                fleet.stopped(s, str(self.fields["name"]))
        except Exception as exc:
            log.warning("could not mark the worker stopped: %s", exc)
