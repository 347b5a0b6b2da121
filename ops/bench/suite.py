"""Benchmark suite: torchqueue's prediction and training paths, each figure beside a
baseline measured in the same run (in-process PyTorch, raw Redis, a naive Celery app, a
plain training loop), with the ratio.

    .venv/bin/python -m ops.bench.suite [--quick] [--json PATH]

It starts its own embedded Redis, SQLite database, API, a prediction and a training
worker, and a worker for ``ops.bench.naive``, in a temporary home, and stops them all.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from ops.bench import load, models
from ops.bench.system import System

CALLERS = 64


@dataclass
class Row:
    section: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")


@dataclass
class Plan:
    seconds: float  # per throughput measurement
    sequential: int  # requests per sequential latency measurement
    big: int  # 256-row requests


PLANS = {"quick": Plan(1.5, 40, 3), "full": Plan(10.0, 300, 20)}


def in_process(plan: Plan) -> tuple[list[Row], dict[str, float]]:
    import torch

    torch.set_num_threads(1)
    rows: list[Row] = []
    ceiling: dict[str, float] = {}
    for family in ("mlp", "text_lstm"):
        for batch in (1, 256):
            ours = models.rate(family, batch, plan.seconds)
            grad = models.rate(family, batch, plan.seconds / 2, inference_mode=False)
            ceiling[f"{family}/b{batch}"] = ours
            rows.append(
                Row(
                    "1 in-process",
                    f"{family} batch {batch}, inference_mode",
                    ours,
                    "pred/s",
                    "same forward, autograd on",
                    grad,
                )
            )
    return rows, ceiling


def naive_rows(system: System, plan: Plan, ceiling: dict[str, float]) -> tuple[list[Row], Any]:
    import redis

    from ops.bench import naive

    r = redis.Redis.from_url(system.bench_url)
    ping = load.sequential(r.ping, plan.sequential * 2)
    noop = load.sequential(lambda: naive.noop.delay().get(timeout=30), plan.sequential * 2)
    row = models.sample_rows(1, seed=3)

    def one() -> object:
        return naive.predict_one.delay("mlp", row).get(timeout=60)

    seq = load.sequential(one, plan.sequential)
    conc = load.concurrent(one, CALLERS, plan.seconds)
    sec = "2-3 naive celery"
    rows = [
        Row("2 floor", "noop round trip p50", noop.pct(50), "ms", "Redis PING p50", ping.pct(50)),
        Row("2 floor", "noop round trip p99", noop.pct(99), "ms", "Redis PING p99", ping.pct(99)),
        Row(sec, "predict_one seq p50", seq.pct(50), "ms", "noop p50", noop.pct(50)),
        Row(sec, f"predict_one x{CALLERS} throughput", conc.throughput, "pred/s",
            "in-process mlp b1", ceiling["mlp/b1"]),
        Row(sec, f"predict_one x{CALLERS} p50", conc.pct(50), "ms", "noop p50", noop.pct(50)),
        Row(sec, f"predict_one x{CALLERS} p99", conc.pct(99), "ms", "noop p99", noop.pct(99)),
    ]  # fmt: skip
    return rows, {"noop": noop, "seq": seq, "conc": conc}


def _wait_job(client: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def _train(client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    job = client.post("/v1/jobs/train", json=body).raise_for_status().json()
    done = _wait_job(client, job["id"])
    return done, time.perf_counter() - started


def torchqueue_rows(
    client: httpx.Client, plan: Plan, ceiling: dict[str, float], naive: dict[str, Any]
) -> list[Row]:
    rng = random.Random(4)
    inputs = [[round(v, 4) for v in r] for r in models.sample_rows(1000, seed=5)]
    labels = [rng.randrange(models.N_CLASSES) for _ in inputs]
    _train(
        client,
        {
            "model_name": "bench-mlp",
            "family": "mlp",
            "params": {"hidden_sizes": [256, 256]},
            "dataset": {"inline": {"inputs": inputs, "labels": labels}},
            "training": {"epochs": 3},
        },
    )
    one = {"model_name": "bench-mlp", "inputs": models.sample_rows(1, seed=3), "wait": 30}
    big = {"model_name": "bench-mlp", "inputs": models.sample_rows(256, seed=6), "wait": 30}

    def call(body: dict[str, Any]) -> object:
        res = client.post("/v1/jobs/predict", json=body)
        if res.status_code != 200 or res.json()["state"] != "succeeded":
            raise RuntimeError(f"predict answered {res.status_code}: {res.text[:300]}")
        return res

    seq = load.sequential(lambda: call(one), plan.sequential)
    conc = load.concurrent(lambda: call(one), CALLERS, plan.seconds)
    batch = load.sequential(lambda: call(big), plan.big, warmup=1)
    n, sec = f"x{CALLERS}", "4 torchqueue predict"
    nseq, nconc = naive["seq"], naive["conc"]
    return [
        Row(sec, "1 row seq p50", seq.pct(50), "ms", "naive predict_one seq p50", nseq.pct(50)),
        Row(sec, "1 row seq p99", seq.pct(99), "ms", "naive predict_one seq p99", nseq.pct(99)),
        Row(sec, "1 row seq p50 vs floor", seq.pct(50), "ms", "noop p50", naive["noop"].pct(50)),
        Row(sec, f"1 row {n} throughput", conc.throughput, "pred/s", f"naive {n} throughput",
            nconc.throughput),
        Row(sec, f"1 row {n} p50", conc.pct(50), "ms", f"naive {n} p50", nconc.pct(50)),
        Row(sec, f"1 row {n} p99", conc.pct(99), "ms", f"naive {n} p99", nconc.pct(99)),
        Row(sec, "256 rows/request", batch.count * 256 / batch.seconds, "pred/s",
            "in-process mlp b256", ceiling["mlp/b256"]),
    ]  # fmt: skip


TRAIN_CASES = [
    ("mlp", "digits", {"epochs": 20, "batch_size": 64}),
    ("text_lstm", "sentiment", {"epochs": 5}),
]


def training_rows(client: httpx.Client) -> list[Row]:
    from ops.gpu_check import plain_loop
    from shared.schemas import TrainRequest, resolve_train
    from workers import data

    rows: list[Row] = []
    for family, dataset, training in TRAIN_CASES:
        body = {
            "model_name": f"bench-{family}-{dataset}",
            "family": family,
            "dataset": {"builtin": dataset},
            "training": training,
        }
        job, client_seconds = _train(client, body)
        train_seconds = sum(h["seconds"] for h in job["result"]["history"])
        spec = resolve_train(TrainRequest.model_validate(body))
        n = int(len(data.load(spec.dataset).inputs) * 0.8)
        epochs = spec.training.epochs
        plain = n * epochs / plain_loop(family, dataset, training, "cpu")
        sec, case = "5 training", f"{family}/{dataset} e{epochs}"
        base = "plain loop s"
        rows += [
            Row(sec, f"{case} training s", train_seconds, "s", base, plain),
            Row(sec, f"{case} usage.wall_seconds", job["usage"]["wall_seconds"], "s", base, plain),
            Row(sec, f"{case} submit to succeeded", client_seconds, "s", base, plain),
        ]
    return rows


def render(rows: list[Row]) -> str:
    head = f"{'figure':44} {'value':>12}  {'baseline':30} {'baseline value':>16} {'ratio':>8}"
    lines = [head, "-" * len(head)]
    section = ""
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append(f"[{section}]")
        lines.append(
            f"{r.figure:44} {_fmt(r.value, r.unit):>12}  {r.baseline:30} "
            f"{_fmt(r.baseline_value, r.unit):>16} {r.ratio:8.3f}"
        )
    return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if unit == "pred/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements (< 1 min)")
    parser.add_argument("--json", type=Path, default=Path(".torchqueue/bench.json"))
    args = parser.parse_args()
    plan = PLANS["quick" if args.quick else "full"]
    started = time.perf_counter()
    system = System()
    try:
        system.start()
        system.wait_ready()
        startup = time.perf_counter() - started
        rows, ceiling = in_process(plan)
        more, naive = naive_rows(system, plan, ceiling)
        rows += more
        limits = httpx.Limits(max_connections=CALLERS * 2, max_keepalive_connections=CALLERS)
        with httpx.Client(base_url=system.api_url, timeout=120, limits=limits) as client:
            rows += torchqueue_rows(client, plan, ceiling, naive)
            rows += training_rows(client)
    finally:
        system.stop()
    total = time.perf_counter() - started
    print(render(rows))
    print(f"\n{'quick' if args.quick else 'full'} run: {total:.1f} s ({startup:.1f} s startup)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "mode": "quick" if args.quick else "full",
        "seconds": total,
        "startup_seconds": startup,
        "plan": asdict(plan),
        "callers": CALLERS,
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    args.json.write_text(json.dumps(doc, indent=2))
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
