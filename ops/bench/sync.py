"""Sync predictions against the HTTP ceiling: the same load generator, the same body and
the same server settings, in one run, for a bare ASGI endpoint, FastAPI with the route's
request model, and torchqueue's route (one API process, then two).

    .venv/bin/python -m ops.bench.sync [--quick]

Every concurrent figure comes with its p99.9 and its slowest request; the tail is also
measured with a fixed number of requests (4,032: 63 per caller), so that a request left
waiting shows as a slow last one and a lower throughput.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ops.bench import load, models
from ops.bench.system import System
from shared import processes

CALLERS = 64
TAIL_PER_CALLER = 63  # 4,032 requests in all


@dataclass
class Figures:
    """One endpoint under the same load: one caller at a time, CALLERS for a time, and
    CALLERS for a fixed number of requests."""

    seq: load.Result
    conc: load.Result
    tail: load.Result


def one_row_body() -> bytes:
    return json.dumps({"inputs": models.sample_rows(1, seed=3)}).encode()


def measure(url: str, body: bytes, seconds: float, sequential: int) -> Figures:
    return Figures(
        seq=load.http_load(url, body, 1, requests=sequential),
        conc=load.http_load(url, body, CALLERS, seconds=seconds),
        tail=load.http_load(url, body, CALLERS, requests=TAIL_PER_CALLER),
    )


def baselines(home: Any, body: bytes, seconds: float, sequential: int) -> dict[str, Figures]:
    """The bare ASGI endpoint and FastAPI, each in a server of its own, one at a time."""
    out: dict[str, Figures] = {}
    for kind in ("bare", "fastapi"):
        port = processes.free_port()
        argv = [sys.executable, "-m", "ops.bench.http_baseline", kind, str(port)]
        proc = processes.spawn(argv, log=home / f"baseline-{kind}.log")
        try:
            _wait_port(port, proc)
            url = f"http://127.0.0.1:{port}/v1/models/bench-mlp/predict"
            out[kind] = measure(url, body, seconds, sequential)
        finally:
            processes.stop(proc, timeout=10)
    return out


def _wait_port(port: int, proc: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the baseline server exited ({proc.returncode})")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"the baseline server did not listen on {port}")


def rows(figures: dict[str, Figures], naive_conc: load.Result | None = None) -> list[Any]:
    """The table's rows: every torchqueue figure beside the bare endpoint's, FastAPI's
    beside it too, and the targets."""
    from ops.bench.suite import Row

    sec = "4a sync predict against the HTTP ceiling"
    bare = figures["bare"]
    out: list[Row] = []
    for name, f in figures.items():
        if name == "bare":
            continue
        label = {"fastapi": "FastAPI, same model"}.get(name, name)
        ours = name.startswith("torchqueue")
        main = name == "torchqueue"
        out += [
            Row(sec, f"{label}: 1 caller p50", f.seq.pct(50), "ms", "bare ASGI p50",
                bare.seq.pct(50)),
            Row(sec, f"{label}: x{CALLERS} throughput", f.conc.throughput, "pred/s",
                "bare ASGI throughput", bare.conc.throughput,
                goal=(">=", 0.30) if main else None),
            Row(sec, f"{label}: x{CALLERS} p99", f.conc.pct(99), "ms", "bare ASGI p99",
                bare.conc.pct(99)),
            Row(sec, f"{label}: x{CALLERS} p99.9", f.conc.pct(99.9), "ms", "bare ASGI p99.9",
                bare.conc.pct(99.9)),
            Row(sec, f"{label}: x{CALLERS} slowest", f.conc.slowest, "ms", "bare ASGI slowest",
                bare.conc.slowest),
            Row(sec, f"{label}: {f.tail.count} req throughput", f.tail.throughput, "pred/s",
                f"same, x{CALLERS} for a time", f.conc.throughput,
                goal=(">=", 0.9) if ours else None),
            Row(sec, f"{label}: {f.tail.count} req p99.9", f.tail.pct(99.9), "ms",
                "bare ASGI, same", bare.tail.pct(99.9)),
            Row(sec, f"{label}: {f.tail.count} req slowest", f.tail.slowest, "ms",
                "bare ASGI, same", bare.tail.slowest),
        ]  # fmt: skip
        if main:
            out += [
                Row(sec, f"{label}: 1 caller p50 (ms, absolute)", f.seq.pct(50), "ms", "-",
                    0.0, goal=("<=", 2.0)),
                Row(sec, f"{label}: x{CALLERS} p99 (ms, absolute)", f.conc.pct(99), "ms", "-",
                    0.0, goal=("<=", 30.0)),
                Row(sec, f"{label}: {f.tail.count} req slowest (ms, absolute)",
                    f.tail.slowest, "ms", "-", 0.0, goal=("<=", 250.0)),
            ]  # fmt: skip
            if naive_conc is not None:
                out.append(
                    Row(sec, f"{label}: x{CALLERS} throughput", f.conc.throughput, "pred/s",
                        "naive Celery throughput", naive_conc.throughput, goal=(">=", 6.0))
                )  # fmt: skip
    return out


def _train_mlp(api_url: str) -> None:
    import random

    from api.client import Client

    rng = random.Random(4)
    inputs = [[round(v, 4) for v in r] for r in models.sample_rows(1000, seed=5)]
    labels = [rng.randrange(models.N_CLASSES) for _ in inputs]
    body = {"model_name": "bench-mlp", "family": "mlp", "params": models.MLP_PARAMS,
            "dataset": {"inline": {"inputs": inputs, "labels": labels}},
            "training": {"epochs": 1}}  # fmt: skip
    with httpx.Client(base_url=api_url, timeout=120) as http:
        job = http.post("/v1/jobs/train", json=body).raise_for_status().json()
        done = Client(http=http).wait(job["id"], timeout=300, poll=0.05)
    if done["state"] != "succeeded":
        raise RuntimeError(f"training the served model: {done['state']} {done.get('error')}")


def torchqueue(
    system: System, seconds: float, sequential: int, api_processes: tuple[int, ...] = (1, 2)
) -> dict[str, Figures]:
    """The route, with the API as one process and then as more (each batching its own
    callers); ``system`` runs the workers and the API already (one process)."""
    body = one_row_body()
    out: dict[str, Figures] = {}
    for n in api_processes:
        if n != 1:
            system.restart_api(n)
        url = f"{system.api_url}/v1/models/bench-mlp/predict"
        out["torchqueue" if n == 1 else f"torchqueue, {n} API processes"] = measure(
            url, body, seconds, sequential
        )
    if api_processes[-1] != 1:
        system.restart_api(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements")
    args = parser.parse_args()
    seconds, sequential = (2.0, 100) if args.quick else (8.0, 400)
    from ops.bench.suite import render

    system = System()
    try:
        system.base()
        system.api()
        system.spawn("predict", ["-m", "ops.cli", "worker", "--cpu", "--queues", "predict"])
        system.spawn("train", ["-m", "ops.cli", "worker", "--cpu", "--queues", "train"])
        while not system.api_ready():
            system.check_alive()
            time.sleep(0.3)
        _train_mlp(system.api_url)
        figures = baselines(system.home, one_row_body(), seconds, sequential)
        figures.update(torchqueue(system, seconds, sequential))
    finally:
        system.stop()
    print(render(rows(figures)))


if __name__ == "__main__":
    main()
