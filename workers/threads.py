"""How many threads torch may use in a worker process: the rule by kind of worker, and
applying the count chosen for this process (before its pool starts) when torch loads."""

from __future__ import annotations

import os

from workers.devices import DeviceGroup

# Threads torch may use in this worker process (0: torch's own choice), chosen before the
# pool starts, so that a forked pool child inherits it.
_chosen = 0


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


def choose(group: DeviceGroup, predict_only: bool, gpus_on_host: int) -> int:
    """Decide this process's count by the rule; ``load_torch`` applies it."""
    global _chosen
    _chosen = torch_threads(group, predict_only, gpus_on_host)
    return _chosen


def load_torch() -> None:
    """Import torch and give it the count chosen for this process."""
    import torch

    if _chosen > 0:
        torch.set_num_threads(_chosen)
