"""What a job cost: wall seconds, device seconds (GPU time, or CPU time on the CPU), peak
device memory (peak resident memory on the CPU), samples per second, and energy in
joules where NVML reports it. Measured around the job, in the process that runs it."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_peak_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets this process's peak RSS
        Path("/proc/self/clear_refs").write_text("5")


def _energy_mj(indices: list[int]) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        total = 0
        for i in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            total += int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        return total
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


class Meter:
    """Started when a job starts; ``finish`` returns the job's usage as JSON."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gpus = [int(g) for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_rss_peak()
        self.energy = _energy_mj(self.gpus) if device.type == "cuda" else None
        self.cpu = _cpu_seconds()
        self.started = time.monotonic()

    def finish(self, samples: int) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        if self.device.type == "cuda":
            device_seconds = wall * max(len(self.gpus), 1)
            peak = int(torch.cuda.max_memory_allocated())
            name = torch.cuda.get_device_name()
        else:
            device_seconds = _cpu_seconds() - self.cpu
            peak = _rss_peak_bytes() or 0
            name = "cpu"
        energy = None
        if self.energy is not None:
            now = _energy_mj(self.gpus)
            energy = None if now is None else (now - self.energy) / 1000
        return {
            "device": name,
            # The training loop autocasts to bfloat16 on GPUs (workers/training.py).
            "precision": "bf16 autocast" if self.device.type == "cuda" else "fp32",
            "wall_seconds": round(wall, 4),
            "device_seconds": round(device_seconds, 4),
            "peak_memory_bytes": peak,
            "samples": samples,
            "samples_per_second": round(samples / wall, 2) if wall > 0 else None,
            "energy_joules": energy,
        }
