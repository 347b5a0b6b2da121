"""Which devices a worker owns. Discovery never touches CUDA (no torch here): the worker's
parent process must not initialise CUDA before it forks the child that trains."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DeviceGroup:
    """A set of GPU indices, or the CPU when empty."""

    gpus: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        if not self.gpus:
            return "cpu"
        if len(self.gpus) > 1 and self.gpus == tuple(range(self.gpus[0], self.gpus[-1] + 1)):
            return f"gpu{self.gpus[0]}-{self.gpus[-1]}"
        return "gpu" + "_".join(str(g) for g in self.gpus)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(g) for g in self.gpus)

    def pin(self) -> None:
        """Set CUDA_VISIBLE_DEVICES for this process and its children, before torch loads."""
        os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices


def discover_gpus() -> list[int]:
    """GPU indices on this machine, from ``nvidia-smi``; none when it is absent."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]


def parse_gpus(text: str) -> DeviceGroup:
    """``"0"``, ``"2,3"`` or ``"all"`` (every GPU that ``nvidia-smi`` lists)."""
    if text == "all":
        found = discover_gpus()
        if not found:
            raise ValueError("--gpus all: nvidia-smi lists no GPU on this machine")
        return DeviceGroup(tuple(found))
    try:
        gpus = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"--gpus takes indices such as 0 or 2,3 or all, not {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise ValueError(f"--gpus takes indices such as 0 or 2,3 or all, not {text!r}")
    return DeviceGroup(gpus)


def torch_device() -> torch.device:
    """The device a task runs on, decided in the process that runs it (the child)."""
    import torch

    if os.environ.get("CUDA_VISIBLE_DEVICES") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
