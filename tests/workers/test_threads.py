"""How many threads torch may use, by the kind of worker."""

from __future__ import annotations

import os
from collections.abc import Callable

from workers.devices import DeviceGroup
from workers.inference import SMALL_BATCH_ROWS, threads_for
from workers.main import torch_threads

CORES = len(os.sched_getaffinity(0))


def test_each_kind_of_worker_gets_its_share(setting: Callable[[str, str], None]) -> None:
    setting("TORCHQUEUE_TORCH_THREADS", "0")
    cpu, gpu = DeviceGroup(), DeviceGroup((0,))
    assert torch_threads(cpu, predict_only=True, gpus_on_host=0) == 0  # every core
    assert torch_threads(cpu, predict_only=False, gpus_on_host=0) == max(1, CORES // 2)
    for gpus in (1, 2, 8, 64):
        threads = torch_threads(gpu, predict_only=False, gpus_on_host=gpus)
        assert 1 <= threads <= min(4, max(1, CORES // gpus))
    setting("TORCHQUEUE_TORCH_THREADS", "3")
    assert torch_threads(cpu, predict_only=False, gpus_on_host=0) == 3
    assert torch_threads(gpu, predict_only=True, gpus_on_host=4) == 3


def test_a_small_batch_runs_on_one_thread() -> None:
    assert threads_for(1) == threads_for(SMALL_BATCH_ROWS - 1) == 1
    assert threads_for(SMALL_BATCH_ROWS) >= 1
