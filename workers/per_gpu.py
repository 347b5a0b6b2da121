"""``--gpus all``: one worker process per GPU, each pinned to its own and started as
``python -m workers.main --gpus N``; a worker that dies is started again.

The workers stay in this process's process group, so that whatever stops the group (a
SIGKILL of it, Ctrl-C in a terminal) stops them too, and each dies with this process
whatever kills it (``die_with_parent``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from shared import processes
from workers.devices import discover_gpus

log = logging.getLogger(__name__)
# How long the workers have to finish their jobs' current step once told to stop.
STOP_SECONDS = 60.0


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
            self.procs[gpu] = processes.spawn(
                [*self.argv, "--gpus", str(gpu)],
                own_group=False,
                die_with_parent=True,
                env=_metrics_port_of(gpu),
            )

    def run(self) -> int:
        while not self.stopping.is_set():
            for gpu in self.gpus:
                self._tend(gpu)
            self.stopping.wait(1.0)
        processes.stop_all(self.procs.values(), STOP_SECONDS, group=False)
        return 0


def _metrics_port_of(gpu: int) -> dict[str, str] | None:
    """Each GPU's worker serves its metrics on the base port plus the GPU's index."""
    from shared.config import get_settings

    base = get_settings().worker_metrics_port
    if base is None:
        return None
    return {**os.environ, "TORCHQUEUE_WORKER_METRICS_PORT": str(base + gpu)}


def run_all(kinds: tuple[str, ...], pool: str, loglevel: str = "INFO") -> int:
    """Supervise one worker per GPU until SIGTERM or SIGINT."""
    gpus = discover_gpus()
    if not gpus:
        raise ValueError("--gpus all: no GPU found (NVML, nvidia-smi, TORCHQUEUE_FAKE_GPUS)")
    argv = [
        sys.executable,
        "-m",
        "workers.main",
        "--queues",
        ",".join(kinds),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
    ]
    supervisor = PerGpu(gpus, argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    return supervisor.run()
