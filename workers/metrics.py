"""A worker's Prometheus metrics, served by its parent process on its own port when
``TORCHQUEUE_WORKER_METRICS_PORT`` is set (``--gpus all``: that port plus each GPU's
index), on ``TORCHQUEUE_WORKER_METRICS_ADDRESS`` (loopback by default).

The work happens in the prefork child and the port is the parent's, so the figures go
through prometheus-client's multiprocess mode: every process of the worker writes its
own to files in one directory (``PROMETHEUS_MULTIPROC_DIR``, set before anything makes a
metric), and the parent adds them up when scraped. The device's figures are read by the
parent when scraped: NVML's utilisation, memory and power per GPU (NVML is not CUDA, and
the parent never touches CUDA), or this worker's processes' CPU time and memory.

- ``torchqueue_worker_jobs_total{kind,outcome}``: jobs run to an end here.
- ``torchqueue_worker_training_samples_total``, ``torchqueue_worker_epoch_seconds``:
  training rows seen (``rate`` gives samples/s) and each epoch's time.
- ``torchqueue_worker_prediction_rows_total``: rows answered by sync-prediction batches.
- ``torchqueue_worker_model_cache_bytes``, ``torchqueue_worker_model_cache_total{result}``:
  what the loaded models take, and cache hits and misses.
- ``torchqueue_gpu_utilization_ratio``, ``torchqueue_gpu_memory_used_bytes``,
  ``torchqueue_gpu_power_watts`` ``{gpu}``, or ``torchqueue_worker_cpu_seconds_total``,
  ``torchqueue_worker_memory_bytes``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"
SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def prepare(port: int | None) -> str | None:
    """Before the worker makes any metric: a fresh directory for its processes' figures
    (removed when it stops); None when no port is asked for (then nothing is recorded)."""
    if port is None:
        return None
    directory = tempfile.mkdtemp(prefix="tq-metrics-")
    os.environ[ENV] = directory
    return directory


def cleanup(directory: str | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Instruments:
    jobs: Any
    samples: Any
    epoch_seconds: Any
    prediction_rows: Any
    cache_bytes: Any
    cache: Any


@functools.cache
def instruments() -> Instruments | None:
    """The metrics this process records into, or None when the worker serves none."""
    if ENV not in os.environ:
        return None
    from prometheus_client import Counter, Gauge, Histogram

    return Instruments(
        jobs=Counter("torchqueue_worker_jobs", "jobs run to an end", ["kind", "outcome"]),
        samples=Counter("torchqueue_worker_training_samples", "training rows seen"),
        epoch_seconds=Histogram(
            "torchqueue_worker_epoch_seconds", "each training epoch's time", buckets=SECONDS
        ),
        prediction_rows=Counter(
            "torchqueue_worker_prediction_rows", "rows answered by sync-prediction batches"
        ),
        cache_bytes=Gauge(
            "torchqueue_worker_model_cache_bytes",
            "memory the loaded models take",
            multiprocess_mode="livesum",
        ),
        cache=Counter("torchqueue_worker_model_cache", "model cache lookups", ["result"]),
    )


def process_gone() -> None:
    """A process of the worker stops: its live figures (the cache's bytes) stop counting."""
    if ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def job_ended(kind: str, outcome: str) -> None:
    if (m := instruments()) is not None:
        m.jobs.labels(kind, outcome).inc()


def epoch_ended(seconds: float) -> None:
    if (m := instruments()) is not None:
        m.epoch_seconds.observe(seconds)


def trained(samples: int) -> None:
    if (m := instruments()) is not None:
        m.samples.inc(samples)


def rows_answered(rows: int) -> None:
    if (m := instruments()) is not None:
        m.prediction_rows.inc(rows)


def cache_lookup(hit: bool, total_bytes: int | None) -> None:
    """A model looked up in the cache; ``total_bytes``: what it holds now, when changed."""
    if (m := instruments()) is not None:
        m.cache.labels("hit" if hit else "miss").inc()
        if total_bytes is not None:
            m.cache_bytes.set(total_bytes)


# Each GPU's figures from NVML: the key in ``_nvml``'s answer, the metric, its help.
GPU_FIGURES = {
    "utilization": ("torchqueue_gpu_utilization_ratio", "the GPU's busy share"),
    "memory": ("torchqueue_gpu_memory_used_bytes", "the GPU's memory in use"),
    "power": ("torchqueue_gpu_power_watts", "the GPU's power draw"),
}


class _Device:
    """Read when scraped: each GPU's NVML figures, or this worker's CPU time and memory."""

    def __init__(self, gpus: list[int]) -> None:
        self.gpus = gpus

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        figures = _nvml(self.gpus)
        if figures is None:
            cpu = CounterMetricFamily(
                "torchqueue_worker_cpu_seconds", "CPU time of the worker's processes"
            )
            memory = GaugeMetricFamily(
                "torchqueue_worker_memory_bytes", "resident memory of the worker's processes"
            )
            seconds, rss = _processes()
            cpu.add_metric([], seconds)
            memory.add_metric([], rss)
            yield from (cpu, memory)
            return
        for key, (name, about) in GPU_FIGURES.items():
            family = GaugeMetricFamily(name, about, labels=["gpu"])
            for gpu, values in figures.items():
                family.add_metric([str(gpu)], values[key])
            yield family


def _nvml(gpus: list[int]) -> dict[int, dict[str, float]] | None:
    """Each GPU's utilisation (0–1), memory used (bytes) and power (W); None without NVML
    or without GPUs."""
    if not gpus:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    out = {}
    for gpu in gpus:
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
        rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        power = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        out[gpu] = {"utilization": rates.gpu / 100.0, "memory": float(memory.used),
                    "power": power}  # fmt: skip
    return out


def _processes() -> tuple[float, float]:
    """CPU seconds and resident bytes of this process and its children (the pool)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    rss = 0.0
    for pid in [os.getpid(), *_children(os.getpid())]:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return seconds, rss


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def registry(gpus: list[int]) -> Any:
    """What the parent serves: every process's figures added up, and the device's."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    made = CollectorRegistry()
    MultiProcessCollector(made)
    made.register(_Device(gpus))
    return made


def serve(port: int, address: str, gpus: list[int]) -> None:
    """The parent's HTTP server."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=address, registry=registry(gpus))
    log.info("metrics on http://%s:%d/metrics", address, port)
