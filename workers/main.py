"""Starting a worker pinned to one device group.

The group is pinned (CUDA_VISIBLE_DEVICES) before anything imports torch. Training
workers use the prefork pool with one child: the child owns the device, the parent never
touches CUDA and keeps heartbeats, control commands and time limits alive. Prediction
workers use threads in one process, so that concurrent requests share the loaded models.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from shared.config import get_settings
from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN
from workers.devices import DeviceGroup

MAX_TASKS_PER_CHILD = 100


def _child_init(**_: Any) -> None:
    """In the prefork child as it starts: load torch, so that the first job doesn't wait."""
    _load_torch()


def _load_torch() -> None:
    import torch

    threads = get_settings().torch_threads
    if threads > 0:
        torch.set_num_threads(threads)


def worker_argv(group: DeviceGroup, queues: list[str], loglevel: str = "INFO") -> list[str]:
    predict_only = QUEUE_TRAIN not in queues
    name = f"{group.name}-predict" if predict_only else group.name
    argv = [
        "worker",
        f"--hostname={name}@%h",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--events",
        "--without-mingle",
        "--without-gossip",
    ]
    if predict_only:
        return [*argv, "--pool=threads", "--concurrency=4"]
    return [
        *argv,
        "--pool=prefork",
        "--concurrency=1",
        f"--max-tasks-per-child={MAX_TASKS_PER_CHILD}",
    ]


def run_worker(group: DeviceGroup, queues: list[str], loglevel: str = "INFO") -> None:
    unknown = set(queues) - {QUEUE_TRAIN, QUEUE_PREDICT}
    if unknown or not queues:
        raise ValueError(f"--queues takes {QUEUE_TRAIN} and/or {QUEUE_PREDICT}, not {queues}")
    group.pin()
    from shared.celery_app import get_celery

    app = get_celery()
    import workers.tasks  # noqa: F401  registers the tasks with the app

    worker_process_init.connect(_child_init, weak=False)
    if QUEUE_TRAIN not in queues:
        _load_torch()
    app.worker_main(worker_argv(group, queues, loglevel))
