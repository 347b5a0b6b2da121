"""``torchqueue up``: the whole system on one machine, in the foreground.

It starts an embedded Redis (unless TORCHQUEUE_REDIS_URL names one), migrates the
database, then the API, one training and one prediction worker per GPU (or for the CPU),
and Flower, each in its own process group. Ctrl-C (or SIGTERM) stops them all.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ops import embedded_redis
from shared import processes

STOP_GRACE_SECONDS = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Supervisor:
    home: Path
    port: int
    flower_port: int
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    redis_proc: subprocess.Popen[bytes] | None = None
    stopping: bool = False
    flower_login: str = ""
    _py: tuple[str, ...] = (sys.executable, "-m", "ops.cli")

    def _say(self, text: str) -> None:
        print(f"torchqueue | {text}", flush=True)

    def _start_redis(self) -> None:
        if self.env.get("TORCHQUEUE_REDIS_URL"):
            self._say(f"redis     {self.env['TORCHQUEUE_REDIS_URL']} (given)")
            return
        self.redis_proc, url = embedded_redis.start(self.home / "redis")
        self.env["TORCHQUEUE_REDIS_URL"] = url
        (self.home / "redis.url").write_text(url + "\n")
        self._say(f"redis     {url} (embedded, data in {self.home / 'redis'})")

    def _migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "ops.cli", "db", "upgrade"], env=self.env, check=True)

    def _secrets(self) -> None:
        """An admin key (unless TORCHQUEUE_BOOTSTRAP_KEY is set or auth is off) and
        Flower's credentials, made on first start and kept under home with mode 600."""
        auth_off = self.env.get("TORCHQUEUE_AUTH", "").lower() == "off"
        if not self.env.get("TORCHQUEUE_BOOTSTRAP_KEY") and not auth_off:
            key_file = self.home / "admin.key"
            if not key_file.exists():
                made = subprocess.run(
                    [*self._py, "keys", "create", "--name", "local admin", "--scopes", "admin"],
                    env=self.env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                _write_private(key_file, made.stdout.strip())
                self._say(f"api key   {made.stdout.strip()} (admin; kept in {key_file})")
            else:
                self._say(f"api key   in {key_file} (the command line reads it there)")
        if not self.env.get("TORCHQUEUE_FLOWER_PASSWORD"):
            cred_file = self.home / "flower.credentials"
            if not cred_file.exists():
                _write_private(cred_file, f"admin:{secrets.token_urlsafe(18)}")
            user, _, password = cred_file.read_text().strip().partition(":")
            self.env["TORCHQUEUE_FLOWER_USER"] = user
            self.env["TORCHQUEUE_FLOWER_PASSWORD"] = password
            self.flower_login = f"{user} / {password} (kept in {cred_file})"
        else:
            self.flower_login = f"{self.env.get('TORCHQUEUE_FLOWER_USER')} / (from the environment)"

    def _plan(self) -> None:
        from workers.devices import discover_gpus

        py = [sys.executable, "-m", "ops.cli"]
        self.children.append(Child("api", [*py, "api", "--port", str(self.port)]))
        groups = [["--gpus", str(g)] for g in discover_gpus()] or [["--cpu"]]
        for group in groups:
            label = group[-1] if group[0] == "--gpus" else "cpu"
            self.children.append(Child(f"worker {label}", [*py, "worker", *group]))
            self.children.append(
                Child(f"predict {label}", [*py, "worker", *group, "--queues", "predict"])
            )
        self.children.append(Child("reaper", [*py, "reaper"]))
        self.children.append(Child("flower", [*py, "flower", "--port", str(self.flower_port)]))

    def _wait_for_api(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                self._check_children()
                time.sleep(0.2)
        raise RuntimeError(f"the API did not start on port {self.port} within {timeout} s")

    def _check_children(self) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None and not self.stopping:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")

    def _banner(self) -> None:
        api = f"http://127.0.0.1:{self.port}"
        self._say(f"api       {api}  (OpenAPI docs: {api}/docs)")
        self._say(f"flower    http://127.0.0.1:{self.flower_port}  login {self.flower_login}")
        self._say(
            f"database  {self.env.get('TORCHQUEUE_DATABASE_URL') or self.home / 'torchqueue.db'}"
        )
        self._say(
            f"artifacts {self.env.get('TORCHQUEUE_ARTIFACTS_URL') or self.home / 'artifacts'}"
        )
        self._say("workers   " + ", ".join(c.name for c in self.children if "worker" in c.name))
        self._say(
            "try:      torchqueue train iris-mlp --family mlp --builtin iris --epochs 50 --wait"
        )
        self._say("          torchqueue predict iris-mlp '[5.1, 3.5, 1.4, 0.2]'")
        self._say("ready; Ctrl-C stops everything")

    def run(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env["TORCHQUEUE_HOME"] = str(self.home)
        self.env["TORCHQUEUE_API_URL"] = f"http://127.0.0.1:{self.port}"
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self._start_redis()
            self._migrate()
            self._secrets()
            self._plan()
            for child in self.children:
                child.proc = processes.spawn(child.argv, env=self.env)
            self._wait_for_api()
            self._banner()
            while not self.stopping:
                self._check_children()
                time.sleep(0.5)
            return 0
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            if not self.stopping:
                self._say(f"error: {exc}")
                return 1
            return 0
        finally:
            self.shutdown()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self._say(f"{signal.Signals(signum).name}: stopping")
        self.stopping = True

    def shutdown(self) -> None:
        self.stopping = True
        procs = [c.proc for c in self.children if c.proc is not None]
        processes.stop_all(procs, STOP_GRACE_SECONDS)
        if self.redis_proc is not None:  # last: the workers need it to shut down cleanly
            processes.stop(self.redis_proc, STOP_GRACE_SECONDS)
        (self.home / "redis.url").unlink(missing_ok=True)
        self._say("stopped")


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
