"""``torchqueue up``: the whole system on one machine, in the foreground.

It checks that its ports are free, starts an embedded Redis (unless TORCHQUEUE_REDIS_URL
names one), migrates the database, then starts the API, a training and a prediction
worker per GPU (or for the CPU), the reaper and Flower, each in a process group of its
own, its output in ``home/logs/<role>.log``. It says "ready" once its own API answers
(the instance id it gave it, on /healthz), every worker answers a Celery ping (and the
training worker's pool child has started: loaded torch) and Flower answers, and prints a
short banner last; it records its URL in ``home/up.json`` for the command line. A process
that dies meanwhile is named, with the last lines of its log.

Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stop everything. Every child is started
through ``shared.die_with_parent``, so that it dies with the supervisor even when the
supervisor is killed outright; a Celery worker's own pool children die with it (Celery
sets their parent-death signal), and ``worker --gpus all`` starts its workers the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ops import child_logs, embedded_redis
from shared import processes

STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 180.0


class StartFailed(Exception):
    """`up` cannot go on; the message says why and what to do."""


@dataclass
class Child:
    role: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    # The size of its log when it started: what is before is an earlier run's.
    offset: int = 0

    def death(self) -> str | None:
        """How it ended, with the last lines of its log; None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        lines = child_logs.last_lines(self.log, self.offset)
        tail = "\n".join(f"    {line}" for line in lines) or "    (nothing)"
        return f"{self.role} (pid {self.proc.pid}) {how}; the last lines of {self.log}:\n{tail}"


@dataclass
class Supervisor:
    home: Path
    port: int
    flower_port: int
    verbose: bool = False
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    redis: Child | None = None
    # The Celery names of the workers, which must answer a ping before "ready", and of
    # those with a pool of child processes, whose children must have started too.
    worker_names: list[str] = field(default_factory=list)
    pool_workers: list[str] = field(default_factory=list)
    stopping: bool = False
    instance: str = field(default_factory=lambda: secrets.token_hex(8))
    key_line: str = ""
    flower_line: str = ""
    _quiet: bool = False
    _py: tuple[str, ...] = (sys.executable, "-m", "ops.cli")

    def __post_init__(self) -> None:
        self.logs = self.home / "logs"
        self.follow = child_logs.Follow(self._say_raw)

    # --- saying --------------------------------------------------------------------

    def _say_raw(self, text: str) -> None:
        if self._quiet:
            return
        try:
            print(text, flush=True)
        except OSError:  # the terminal is gone (SIGHUP): go on stopping, silently
            self._quiet = True

    def _say(self, text: str) -> None:
        self._say_raw(f"torchqueue | {text}")

    def _pump(self) -> None:
        """With --verbose, show what the processes wrote since the last look."""
        if self.verbose:
            self.follow.pump()

    # --- before anything starts ----------------------------------------------------

    def _check_ports(self) -> None:
        host = self.env.get("TORCHQUEUE_API_HOST", "127.0.0.1")
        if self.port == self.flower_port:
            raise StartFailed(
                f"the API and Flower cannot both listen on port {self.port}: "
                "choose another with --port or --flower-port"
            )
        for what, host_, port, option, variable in (
            ("the API's", host, self.port, "--port", "TORCHQUEUE_API_PORT"),
            ("Flower's", "127.0.0.1", self.flower_port, "--flower-port", "TORCHQUEUE_FLOWER_PORT"),
        ):
            if processes.port_is_free(port, host_):
                continue
            free = next(
                p
                for p in range(port + 1, 65536)
                if p not in (self.port, self.flower_port) and processes.port_is_free(p, host_)
            )
            raise StartFailed(
                f"port {port} ({what}) is taken on {host_}: another `torchqueue up` or another "
                f"program listens there.\nChoose another: torchqueue up {option} {free} "
                f"(or {variable}={free})"
            )

    def _prepare_home(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env["TORCHQUEUE_HOME"] = str(self.home)
        self.env["TORCHQUEUE_API_URL"] = f"http://127.0.0.1:{self.port}"
        self.env["TORCHQUEUE_INSTANCE"] = self.instance
        how = "; --verbose shows them here too" if not self.verbose else ""
        self._say(f"starting in {self.home} (logs in {self.logs}{how})")

    def _start_redis(self) -> None:
        if self.env.get("TORCHQUEUE_REDIS_URL"):
            return
        redis = Child("redis", [], child_logs.log_file(self.logs, "redis"))
        child_logs.rotate(redis.log)
        redis.offset = child_logs.size(redis.log)
        try:
            redis.proc, url = embedded_redis.start(
                self.home / "redis", log=redis.log, die_with_parent=True
            )
        except RuntimeError as exc:
            lines = "\n".join(f"    {x}" for x in child_logs.last_lines(redis.log, redis.offset))
            raise StartFailed(f"redis: {exc}\n{lines}") from None
        self.redis = redis
        self.follow.add("redis", redis.log, redis.offset)
        self.env["TORCHQUEUE_REDIS_URL"] = url
        (self.home / "redis.url").write_text(url + "\n")

    def _migrate(self) -> None:
        log = child_logs.log_file(self.logs, "migrate")
        child_logs.rotate(log)
        offset = child_logs.size(log)
        argv = [*self._py, "db", "upgrade"]
        code = processes.spawn(argv, log=log, env=self.env, die_with_parent=True).wait()
        if code != 0:
            lines = "\n".join(f"    {x}" for x in child_logs.last_lines(log, offset))
            raise StartFailed(f"the database migration exited with {code}:\n{lines}")

    def _secrets(self) -> None:
        """An admin key (unless TORCHQUEUE_BOOTSTRAP_KEY is set or auth is off) and
        Flower's credentials, made on first start and kept under home with mode 600."""
        key_file = self.home / "admin.key"
        if self.env.get("TORCHQUEUE_AUTH", "").lower() == "off":
            self.key_line = "none: TORCHQUEUE_AUTH=off, the API takes every request"
        elif self.env.get("TORCHQUEUE_BOOTSTRAP_KEY") and not key_file.exists():
            self.key_line = "TORCHQUEUE_BOOTSTRAP_KEY (from the environment)"
        else:
            made = ""
            if not key_file.exists():
                created = subprocess.run(
                    [*self._py, "keys", "create", "--name", "local admin", "--scopes", "admin"],
                    env=self.env,
                    capture_output=True,
                    text=True,
                )
                if created.returncode != 0:
                    raise StartFailed(f"making the admin key failed:\n{created.stderr.strip()}")
                _write_private(key_file, created.stdout.strip())
                made = ", made now"
            self.key_line = f"{key_file} (admin{made}; the command line reads it)"
        given = self.env.get("TORCHQUEUE_FLOWER_PASSWORD_FILE")
        if given and not self.env.get("TORCHQUEUE_FLOWER_PASSWORD"):
            # Read here, as the settings read it: `up` checks Flower's page with it.
            from shared.config import read_secret_file

            password = read_secret_file("TORCHQUEUE_FLOWER_PASSWORD_FILE", given)
            self.env.pop("TORCHQUEUE_FLOWER_PASSWORD_FILE")
            self.env["TORCHQUEUE_FLOWER_PASSWORD"] = password
        if not self.env.get("TORCHQUEUE_FLOWER_PASSWORD"):
            cred_file = self.home / "flower.credentials"
            if not cred_file.exists():
                _write_private(cred_file, f"admin:{secrets.token_urlsafe(18)}")
            user, _, password = cred_file.read_text().strip().partition(":")
            self.env["TORCHQUEUE_FLOWER_USER"] = user
            self.env["TORCHQUEUE_FLOWER_PASSWORD"] = password
            self.flower_line = f"login {user}, password in {cred_file}"
        else:
            self.flower_line = (
                f"login {self.env.get('TORCHQUEUE_FLOWER_USER')} (from the environment)"
            )

    # --- the processes -------------------------------------------------------------

    def _plan(self) -> None:
        from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN, QUEUE_WEBHOOKS
        from workers.devices import DeviceGroup, discover_gpus, parse_gpus
        from workers.main import node_name, role

        py = list(self._py)
        self.children.append(self._child("api", [*py, "api", "--port", str(self.port)]))
        groups = [(["--gpus", str(g)], parse_gpus(str(g))) for g in discover_gpus()]
        for args, group in groups or [(["--cpu"], DeviceGroup())]:
            for kinds, queues in (
                ((QUEUE_TRAIN, QUEUE_PREDICT), []),
                ((QUEUE_PREDICT,), ["--queues", QUEUE_PREDICT]),
            ):
                self.children.append(
                    self._child(role(group, kinds), [*py, "worker", *args, *queues])
                )
                self.worker_names.append(node_name(group, kinds))
                if QUEUE_TRAIN in kinds:  # the prefork pool (``workers.main``)
                    self.pool_workers.append(node_name(group, kinds))
        # Webhook deliveries: a torch-free worker of its own, a pool of threads.
        hooks = ["worker", "--cpu", "--queues", QUEUE_WEBHOOKS]
        self.children.append(self._child("worker:webhooks", [*py, *hooks]))
        self.worker_names.append(f"webhooks@{socket.gethostname()}")
        self.children.append(self._child("reaper", [*py, "reaper"]))
        self.children.append(
            self._child("flower", [*py, "flower", "--port", str(self.flower_port)])
        )

    def _child(self, role: str, argv: list[str]) -> Child:
        return Child(role, argv, child_logs.log_file(self.logs, role))

    def _start_children(self) -> None:
        for child in self.children:
            child_logs.rotate(child.log)
            child.offset = child_logs.size(child.log)
            child.proc = processes.spawn(
                child.argv, log=child.log, env=self.env, die_with_parent=True
            )
            self.follow.add(child.role, child.log, child.offset)

    def _check_children(self) -> None:
        for child in [*([self.redis] if self.redis else []), *self.children]:
            death = child.death()
            if death is not None and not self.stopping:
                raise StartFailed(death)

    # --- ready ---------------------------------------------------------------------

    def _api_is_ours(self) -> bool:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
            return bool(answer.json().get("instance") == self.instance)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    def _flower_answers(self) -> bool:
        login = (self.env["TORCHQUEUE_FLOWER_USER"], self.env["TORCHQUEUE_FLOWER_PASSWORD"])
        try:
            url = f"http://127.0.0.1:{self.flower_port}/healthcheck"
            return httpx.get(url, auth=login, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_until_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        from shared.celery_app import create_celery
        from shared.config import Settings

        celery = create_celery(Settings(redis_url=self.env["TORCHQUEUE_REDIS_URL"]))
        silent = set(self.worker_names)
        starting = set(self.pool_workers)

        def workers_answer() -> bool:
            if silent:
                replies = celery.control.ping(destination=sorted(silent), timeout=0.5) or []
                silent.difference_update(name for reply in replies for name in reply)
            if not silent and starting:
                stats = celery.control.inspect(sorted(starting), timeout=1.0).stats() or {}
                starting.difference_update(n for n, s in stats.items() if _pool_started(s))
            return not silent and not starting

        waiting: dict[str, Any] = {
            "the API": self._api_is_ours,
            "the workers": workers_answer,
            "Flower": self._flower_answers,
        }
        deadline = time.monotonic() + timeout
        try:
            while waiting and not self.stopping:
                self._check_children()
                self._pump()
                for what, answers in list(waiting.items()):
                    if answers():
                        del waiting[what]
                if time.monotonic() > deadline:
                    names = (
                        ", ".join(sorted(silent or starting)) if "the workers" in waiting else ""
                    )
                    raise StartFailed(
                        f"not ready within {timeout:.0f} s: {', '.join(waiting)} did not answer"
                        f"{f' ({names})' if names else ''}; see the logs in {self.logs}"
                    )
                time.sleep(0.2)
        finally:
            celery.close()

    def _record(self) -> None:
        """What the command line and clients started elsewhere need: where the API is."""
        key_file = self.home / "admin.key"
        record = {
            "api_url": f"http://127.0.0.1:{self.port}",
            "flower_url": f"http://127.0.0.1:{self.flower_port}",
            "key_file": str(key_file) if key_file.exists() else None,
            "pid": os.getpid(),
            "instance": self.instance,
        }
        partial = self.home / "up.json.partial"
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(self.home / "up.json")

    def _banner(self, seconds: float) -> None:
        api = f"http://127.0.0.1:{self.port}"
        redis = self.env["TORCHQUEUE_REDIS_URL"]
        self._say(f"api        {api}   (docs: {api}/docs)")
        self._say(f"flower     http://127.0.0.1:{self.flower_port}   ({self.flower_line})")
        self._say(f"key file   {self.key_line}")
        self._say(f"redis      {redis} ({'embedded' if self.redis else 'given'})")
        for child in [*([self.redis] if self.redis else []), *self.children]:
            pid = child.proc.pid if child.proc else "-"
            log = child.log.relative_to(self.home)
            self._say(f"process    {child.role:<20} pid {pid!s:<8} log {log}")
        self._say(
            "try        torchqueue train iris-mlp --family mlp --builtin iris --epochs 50 --wait"
        )
        self._say("           torchqueue predict iris-mlp '[5.1, 3.5, 1.4, 0.2]'")
        self._say(f"ready in {seconds:.0f} s; Ctrl-C stops everything")

    # --- the whole run -------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self._check_ports()
            self._prepare_home()
            self._start_redis()
            self._migrate()
            self._secrets()
            self._plan()
            self._start_children()
            self._wait_until_ready()
            if self.stopping:
                return 0
            self._record()
            self._banner(time.monotonic() - started)
            while not self.stopping:
                self._check_children()
                self._pump()
                time.sleep(0.2)
            return 0
        except StartFailed as exc:
            if self.stopping:
                return 0
            self._say(f"error: {exc}")
            return 1
        finally:
            self.shutdown()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self._say(f"{signal.Signals(signum).name}: stopping")
        self.stopping = True

    def shutdown(self) -> None:
        self.stopping = True
        procs = [c.proc for c in self.children if c.proc is not None]
        if not procs and self.redis is None:
            return
        began = time.monotonic()
        # Each leader stops its own children (a Celery worker its pool), then the groups go.
        processes.stop_all(procs, STOP_GRACE_SECONDS, leader_first=True)
        if self.redis is not None and self.redis.proc is not None:
            # Last: the workers need it to shut down cleanly.
            processes.stop(self.redis.proc, STOP_GRACE_SECONDS)
        self._pump()
        if self._recorded_by_us():
            (self.home / "up.json").unlink(missing_ok=True)
        if self.redis is not None:
            (self.home / "redis.url").unlink(missing_ok=True)
        self._say(f"stopped in {time.monotonic() - began:.1f} s")

    def _recorded_by_us(self) -> bool:
        try:
            recorded = json.loads((self.home / "up.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(recorded.get("instance") == self.instance)


def _pool_started(stats: dict[str, Any]) -> bool:
    """Whether every child of a Celery worker's prefork pool has started (a training
    worker's child loads torch first): until then a job, or a stop, waits for it. Celery
    counts a child's input queue once the child has said it is up."""
    pool = stats.get("pool") or {}
    writes = pool.get("writes")
    if not isinstance(writes, dict) or not isinstance(writes.get("inqueues"), dict):
        return True  # a pool that does not say: nothing to wait for
    return int(writes["inqueues"].get("total", 0)) >= len(pool.get("processes") or [])


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
