"""The processes the suite needs, started the way the tests start them, and stopped (whole
process groups) with the temporary home, even on error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ops import embedded_redis
from shared import processes

ROOT = Path(__file__).resolve().parents[2]


class System:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="tq-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_url = ""
        self.bench_url = ""
        self.api_url = ""
        self._api: subprocess.Popen[bytes] | None = None

    def base(self, threads: int = 1, **env: str) -> None:
        """An embedded Redis, a migrated SQLite database and the environment that points
        every process started next at them (authentication off), in the temporary home."""
        redis_proc, url = embedded_redis.start(self.home / "redis")
        self.procs.append(redis_proc)
        self.redis_url = url
        db_url = f"sqlite:///{self.home / 'torchqueue.db'}"
        os.environ.update(
            TORCHQUEUE_HOME=str(self.home),
            TORCHQUEUE_REDIS_URL=url,
            TORCHQUEUE_DATABASE_URL=db_url,
            TORCHQUEUE_ARTIFACTS_URL=str(self.home / "artifacts"),
            TORCHQUEUE_AUTH="off",
            TORCHQUEUE_PROGRESS_INTERVAL_SECONDS="5",
            TORCHQUEUE_TORCH_THREADS=str(threads),
            **env,
        )
        from shared.celery_app import get_celery
        from shared.config import get_settings
        from shared.db.migrate import upgrade

        get_settings.cache_clear()
        get_celery.cache_clear()
        upgrade(db_url)

    def api(self, workers: int = 1) -> None:
        """The API on a port of its own, as ``workers`` processes."""
        port = processes.free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.spawn("api", ["-m", "ops.cli", "api", "--port", str(port), "--workers", str(workers)])
        self._api = self.procs[-1]

    def restart_api(self, workers: int) -> None:
        """The API again, as ``workers`` processes, once it is ready."""
        if self._api is not None:
            processes.stop(self._api, timeout=15)
            self.procs.remove(self._api)
        self.api(workers)
        deadline = time.monotonic() + 60
        while not self.api_ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not start; its log: {self.home}/api.log")
            time.sleep(0.2)

    def worker(self, *argv: str, timeout: float = 120) -> None:
        """One CPU worker (``argv``: more of its options), once it answers a ping."""
        from shared.celery_app import get_celery

        self.spawn("worker", ["-m", "ops.cli", "worker", "--cpu", *argv])
        deadline = time.monotonic() + timeout
        while pings(get_celery(), "cpu") < 1:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not start; its log: {self.home}/worker.log")
            time.sleep(0.3)

    def start(self) -> None:
        """What the suite measures: the API, a training and a prediction worker, and the
        naive Celery baseline's worker."""
        self.base()
        self.bench_url = self.redis_url.rsplit("/", 1)[0] + "/1"
        os.environ["TORCHQUEUE_BENCH_REDIS_URL"] = self.bench_url
        self.api()
        self.spawn("predict", ["-m", "ops.cli", "worker", "--cpu", "--queues", "predict"])
        self.spawn("train", ["-m", "ops.cli", "worker", "--cpu", "--queues", "train"])
        naive = ["-m", "celery", "-A", "ops.bench.naive", "worker", "--pool", "threads"]
        naive += ["-c", "4", "--without-mingle", "--without-gossip", "-Q", "bench"]
        naive += ["--loglevel", "WARNING", "-n", "naive@%h"]
        self.spawn("naive", naive)

    def spawn(self, name: str, argv: list[str]) -> None:
        log = self.home / f"{name}.log"
        self.procs.append(processes.spawn([sys.executable, *argv], log=log, cwd=ROOT))

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.home.glob("*.log")
                )
                raise RuntimeError(f"a process exited ({proc.args!r}):\n{logs}")

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the API answers /readyz and all three workers answer a ping."""
        from ops.bench import naive
        from shared.celery_app import get_celery

        deadline = time.monotonic() + timeout
        checks: list[tuple[str, Callable[[], bool]]] = [
            ("api", self.api_ready),
            ("torchqueue workers", lambda: pings(get_celery(), "cpu") >= 2),
            ("naive worker", lambda: pings(naive.app, "naive") >= 1),
        ]
        for what, check in checks:
            while not check():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} not ready within {timeout} s; logs in {self.home}")
                time.sleep(0.3)

    def api_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        for proc in reversed(self.procs):  # Redis last: the workers need it to stop cleanly
            processes.stop(proc, timeout=15)
        shutil.rmtree(self.home, ignore_errors=True)


def pings(app: Any, prefix: str) -> int:
    replies = app.control.ping(timeout=0.5) or []
    return sum(1 for reply in replies for name in reply if name.startswith(prefix))
