"""Starting a worker pinned to one device group, or one per GPU (``--gpus all``).

The group is pinned (CUDA_VISIBLE_DEVICES) before anything imports torch. Training
workers use the prefork pool with one child: the child owns the device, the parent never
touches CUDA and keeps heartbeats, control commands and time limits alive. Prediction
workers run each task in the consumer's own thread (the solo pool): one process owns the
device and the loaded models, the API has already coalesced concurrent requests into
batches of milliseconds, and a hand-off to a pool thread costs more than it saves.
The parent registers the worker in the database and renews its row from a thread.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
from importlib import metadata
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN
from shared.routing import worker_queues
from workers.devices import DeviceGroup, discover_gpus

log = logging.getLogger(__name__)
MAX_TASKS_PER_CHILD = 100
# A training child whose resident memory passes this after a job is replaced (leaks).
MAX_MEMORY_PER_CHILD_KB = 16 * 1024 * 1024


def _child_init(**_: Any) -> None:
    """In the prefork child as it starts: drop the database connections inherited from
    the parent (a socket shared by two processes corrupts both), and load torch and what
    training imports, so that the first job doesn't wait."""
    from shared.db.session import after_fork

    after_fork()
    _load_torch()
    # What the first training job would otherwise wait for (about 2 s): the optimizers'
    # fused paths load torch._dynamo, the built-in data sets scikit-learn.
    import sklearn.datasets  # noqa: F401
    import torch._dynamo  # noqa: F401


def _record_pending(**_: Any) -> None:
    """As a worker (or a prefork child) stops: record the served predictions still
    waiting to be written."""
    if "workers.serving" in sys.modules:
        from workers.serving import close_writer

        close_writer()


# Threads torch may use in this worker process, chosen before the pool starts.
_THREADS = 0


def torch_threads(group: DeviceGroup, predict_only: bool, gpus_on_host: int) -> int:
    """The thread rule (README, Performance), unless TORCHQUEUE_TORCH_THREADS says:
    - a GPU worker: the GPU does the arithmetic; a few threads feed it, at most 4, and
      the host's cores are shared among its GPUs' workers;
    - a CPU prediction worker: every core (a batch under 32 rows then runs on one thread:
      ``workers.inference.threads_for``);
    - a CPU training worker: half the cores, since the host also runs a prediction worker
      and the API; two processes asking for every core slow each other several times over.
    0 means: leave torch's own choice."""
    from shared.config import get_settings

    configured = get_settings().torch_threads
    if configured > 0:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if group.gpus:
        return max(1, min(4, cores // max(1, gpus_on_host)))
    return 0 if predict_only else max(1, cores // 2)


def _load_torch() -> None:
    import torch

    if _THREADS > 0:
        torch.set_num_threads(_THREADS)


def node_name(group: DeviceGroup, kinds: tuple[str, ...]) -> str:
    suffix = "" if QUEUE_TRAIN in kinds else "-predict"
    return f"{group.name}{suffix}@{socket.gethostname()}"


def worker_argv(name: str, queues: list[str], predict_only: bool, loglevel: str) -> list[str]:
    argv = [
        "worker",
        f"--hostname={name}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--events",
        "--without-mingle",
        "--without-gossip",
    ]
    if predict_only:
        return [*argv, "--pool=solo"]
    return [
        *argv,
        "--pool=prefork",
        "--concurrency=1",
        f"--max-tasks-per-child={MAX_TASKS_PER_CHILD}",
        f"--max-memory-per-child={MAX_MEMORY_PER_CHILD_KB}",
    ]


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
    """The worker's row in the registry, renewed from a thread of the parent process."""

    def __init__(self, name: str, pool: str, queues: list[str], devices: list[Any]) -> None:
        self.fields = {
            "name": name,
            "host": socket.gethostname(),
            "pool": pool,
            "queues": queues,
            "devices": devices,
            "versions": _versions(),
            "pid": os.getpid(),
        }
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)

    def __enter__(self) -> Registration:
        from shared.db import registry
        from shared.db.session import session_scope

        with session_scope() as s:
            registry.register(s, **self.fields)
        self._thread.start()
        return self

    def _run(self) -> None:
        from shared.config import get_settings
        from shared.db import registry
        from shared.db.session import session_scope

        while not self._done.wait(get_settings().worker_heartbeat_seconds):
            try:
                with session_scope() as s:
                    registry.seen(s, str(self.fields["name"]))
            except Exception as exc:  # a database blip: try again next beat
                log.warning("could not renew the worker's registration: %s", exc)

    def __exit__(self, *_: object) -> None:
        from shared.db import registry
        from shared.db.session import session_scope

        self._done.set()
        self._thread.join(5)
        try:
            with session_scope() as s:
                registry.stopped(s, str(self.fields["name"]))
        except Exception as exc:
            log.warning("could not mark the worker stopped: %s", exc)


def run_worker(
    group: DeviceGroup, kinds: tuple[str, ...], pool: str, loglevel: str = "INFO"
) -> None:
    unknown = set(kinds) - {QUEUE_TRAIN, QUEUE_PREDICT}
    if unknown or not kinds:
        raise ValueError(f"--queues takes {QUEUE_TRAIN} and/or {QUEUE_PREDICT}, not {kinds}")
    devices = group.devices()
    group.pin()
    memory = min((d.memory_gb for d in devices), default=0.0)
    queues = worker_queues(pool, max(len(devices), 1), memory, kinds)
    from shared.celery_app import get_celery

    app = get_celery()
    import workers.tasks  # noqa: F401  registers the tasks with the app

    global _THREADS
    _THREADS = torch_threads(group, QUEUE_TRAIN not in kinds, len(discover_gpus()))
    log.info("torch threads per process: %s", _THREADS or "torch's default")
    worker_process_init.connect(_child_init, weak=False)
    worker_process_shutdown.connect(_record_pending, weak=False)
    worker_shutdown.connect(_record_pending, weak=False)
    predict_only = QUEUE_TRAIN not in kinds
    if predict_only:
        _load_torch()
    name = node_name(group, kinds)
    with Registration(name, pool, queues, [d.to_json() for d in devices]):
        app.worker_main(worker_argv(name, queues, predict_only, loglevel))


class PerGpu:
    """One worker process per GPU, each pinned to its own; a worker that dies is started
    again, after a pause that doubles while it keeps dying."""

    def __init__(self, gpus: list[int], argv: list[str]) -> None:
        self.gpus, self.argv = gpus, argv
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.pause = dict.fromkeys(gpus, 1.0)
        self.stopping = threading.Event()

    def _tend(self, gpu: int) -> None:
        proc = self.procs.get(gpu)
        if proc is not None and proc.poll() is None:
            return
        if proc is not None:
            log.warning("worker for GPU %d exited with %s; restarting", gpu, proc.returncode)
            self.stopping.wait(self.pause[gpu])
            self.pause[gpu] = min(self.pause[gpu] * 2, 60.0)
        if not self.stopping.is_set():
            self.procs[gpu] = subprocess.Popen([*self.argv, "--gpus", str(gpu)])

    def run(self) -> int:
        while not self.stopping.is_set():
            for gpu in self.gpus:
                self._tend(gpu)
            self.stopping.wait(1.0)
        live = [p for p in self.procs.values() if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return 0


def run_all(kinds: tuple[str, ...], pool: str, loglevel: str = "INFO") -> int:
    """``--gpus all``: supervise one worker per GPU until SIGTERM or SIGINT."""
    gpus = discover_gpus()
    if not gpus:
        raise ValueError("--gpus all: no GPU found (NVML, nvidia-smi, TORCHQUEUE_FAKE_GPUS)")
    argv = [
        sys.executable,
        "-m",
        "ops.cli",
        "worker",
        "--queues",
        ",".join(kinds),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
    ]
    supervisor = PerGpu(gpus, argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    return supervisor.run()
