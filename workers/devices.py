"""Which devices a worker owns. Discovery never touches CUDA (no torch here): the worker's
parent process must not initialise CUDA before it forks the child that trains. It asks
NVML (``nvidia-ml-py``) or ``nvidia-smi``; ``TORCHQUEUE_FAKE_GPUS=N`` makes it report N
devices that map to the CPU, so that tests run pinned workers on machines without GPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FAKE_GPUS = "TORCHQUEUE_FAKE_GPUS"
FAKE_GPU_MEMORY_GB = "TORCHQUEUE_FAKE_GPU_MEMORY_GB"


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    memory_gb: float
    compute_capability: str | None = None
    fake: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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

    def devices(self) -> list[Device]:
        """The group's devices as discovery describes them (the CPU: none)."""
        found = {d.index: d for d in discover()}
        missing = [g for g in self.gpus if g not in found]
        if missing:
            raise ValueError(f"no GPU {missing} on this machine (found {sorted(found)})")
        return [found[g] for g in self.gpus]


def _fake() -> list[Device] | None:
    count = os.environ.get(FAKE_GPUS)
    if not count:
        return None
    memory = float(os.environ.get(FAKE_GPU_MEMORY_GB, "16"))
    return [Device(i, "fake GPU (the CPU)", memory, None, True) for i in range(int(count))]


def _nvml() -> list[Device] | None:
    try:
        import pynvml  # from nvidia-ml-py, where installed
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            out.append(Device(i, name, round(memory, 1), f"{major}.{minor}"))
        return out
    finally:
        pynvml.nvmlShutdown()


def _smi() -> list[Device]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = "--query-gpu=index,name,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            cap = parts[3] if len(parts) > 3 else None
            devices.append(Device(int(parts[0]), parts[1], round(float(parts[2]) / 1024, 1), cap))
    return devices


def discover() -> list[Device]:
    """The GPUs of this machine: fake ones when asked, else NVML, else nvidia-smi."""
    for source in (_fake, _nvml):
        found = source()
        if found is not None:
            return found
    return _smi()


def discover_gpus() -> list[int]:
    return [d.index for d in discover()]


def parse_gpus(text: str) -> DeviceGroup:
    """``"0"`` or ``"2,3"``; ``"all"`` is handled by the worker supervisor."""
    try:
        gpus = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"--gpus takes indices such as 0 or 2,3 or all, not {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise ValueError(f"--gpus takes indices such as 0 or 2,3 or all, not {text!r}")
    return DeviceGroup(gpus)


def torch_device() -> torch.device:
    """The device a task runs on, decided in the process that runs it (the child). Fake
    GPUs map to the CPU."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible and not os.environ.get(FAKE_GPUS) and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
