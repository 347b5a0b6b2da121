"""Load generation: sequential latencies, and N concurrent callers for a fixed time."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Result:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile latency in milliseconds."""
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0] * 1000
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return cuts[int(q) - 1] * 1000


def sequential(call: Callable[[], object], n: int, warmup: int = 3) -> Result:
    for _ in range(warmup):
        call()
    lat: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return Result(n, time.perf_counter() - started, lat)


def concurrent(call: Callable[[], object], callers: int, seconds: float) -> Result:
    """``callers`` threads call in a loop until ``seconds`` pass; errors are re-raised."""
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(callers + 1)
    deadline = 0.0

    def run() -> None:
        start.wait()
        mine: list[float] = []
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                call()
                mine.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(callers)]
    for th in threads:
        th.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for th in threads:
        th.join(seconds + 120)
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Result(len(lat), elapsed, lat)
