"""How many threads torch may use, by the kind of worker (README, Performance: Threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.helpers import ROOT
from workers.devices import DeviceGroup
from workers.threads import torch_threads

CPU, GPU = DeviceGroup(), DeviceGroup((0,))


@pytest.mark.parametrize(
    ("cores", "group", "predict_only", "gpus_on_host", "threads"),
    [
        # A CPU prediction worker: torch's own choice, every core.
        (16, CPU, True, 0, 0),
        # A CPU training worker: half the cores (a prediction worker and the API share
        # the machine), and never none.
        (16, CPU, False, 0, 8),
        (3, CPU, False, 0, 1),
        (1, CPU, False, 0, 1),
        # A GPU worker, training or predicting: at most 4, the machine's cores shared
        # among its GPUs' workers, and never none.
        (16, GPU, False, 1, 4),
        (16, GPU, True, 1, 4),
        (6, GPU, False, 2, 3),
        (16, GPU, False, 8, 2),
        (16, GPU, False, 64, 1),
    ],
)
def test_each_kind_of_worker_gets_its_share(
    setting: Callable[[str, str], None],
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    group: DeviceGroup,
    predict_only: bool,
    gpus_on_host: int,
    threads: int,
) -> None:
    setting("TORCHQUEUE_TORCH_THREADS", "0")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert torch_threads(group, predict_only, gpus_on_host) == threads


def test_the_setting_overrides_the_rule(setting: Callable[[str, str], None]) -> None:
    setting("TORCHQUEUE_TORCH_THREADS", "3")
    assert torch_threads(CPU, predict_only=False, gpus_on_host=0) == 3
    assert torch_threads(GPU, predict_only=True, gpus_on_host=4) == 3


def test_a_prediction_worker_runs_a_small_batch_on_one_thread_a_large_one_on_all() -> None:
    """In a process started as a prediction worker is, given 3 threads: a batch under
    SMALL_BATCH_ROWS runs on one, a larger one on all three."""
    code = (
        "from workers import threads\n"
        "from workers.devices import DeviceGroup\n"
        "threads.choose(DeviceGroup(), True, 0)\n"
        "threads.load_torch()\n"
        "from workers.inference import SMALL_BATCH_ROWS, threads_for\n"
        "rows = (1, SMALL_BATCH_ROWS - 1, SMALL_BATCH_ROWS, 4096)\n"
        "print(*(threads_for(n) for n in rows))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "TORCHQUEUE_TORCH_THREADS": "3"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "3", "3"]
