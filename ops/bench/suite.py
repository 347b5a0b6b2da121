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

from api.client import Client
from ops.bench import load, models
from ops.bench.system import System
from shared.jobstate import TERMINAL

CALLERS = 64
# Callers sending 256-row requests at once.
BIG_CALLERS = 4


@dataclass
class Row:
    section: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    # A target for the ratio: (">=", 4.0) or ("<=", 1.05); for ms figures with a
    # baseline of 0, a target for the value itself.
    goal: tuple[str, float] | None = None

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        op, bound = self.goal
        got = self.ratio if self.baseline_value else self.value
        met = got >= bound if op == ">=" else got <= bound
        if met:
            return f"{op}{bound:g} met"
        return f"{op}{bound:g} missed by {abs(got / bound - 1):.0%}"


@dataclass
class Plan:
    seconds: float  # per throughput measurement
    sequential: int  # requests per sequential latency measurement
    big: int  # 256-row requests


PLANS = {"quick": Plan(1.5, 40, 10), "full": Plan(10.0, 300, 60)}


def in_process(plan: Plan) -> tuple[list[Row], dict[str, float]]:
    import torch

    torch.set_num_threads(1)
    rows: list[Row] = []
    ceiling: dict[str, float] = {}
    for family in ("mlp", "text_lstm", "text_transformer", "image_cnn"):
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
    job = Client(http=client).wait(job_id, timeout=timeout, poll=0.05)
    if job["state"] not in TERMINAL:
        raise TimeoutError(f"job {job_id} did not finish in {timeout} s")
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
    return job


def _train(client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    job = client.post("/v1/jobs/train", json=body).raise_for_status().json()
    done = _wait_job(client, job["id"])
    return done, time.perf_counter() - started


def _train_serving_models(client: httpx.Client) -> None:
    """The served models, the same sizes as the in-process ones (``ops.bench.models``)."""
    rng = random.Random(4)
    rows = [[round(v, 4) for v in r] for r in models.sample_rows(1000, seed=5)]
    texts = models.sample_texts(1000, seed=5)
    images = models.sample_images(1000, seed=5).tolist()
    for name, family, params, inputs, classes in (
        ("bench-mlp", "mlp", models.MLP_PARAMS, rows, models.N_CLASSES),
        ("bench-lstm", "text_lstm", models.LSTM_PARAMS, texts, 2),
        ("bench-transformer", "text_transformer", models.TRANSFORMER_PARAMS, texts, 2),
        ("bench-cnn", "image_cnn", models.IMAGE_PARAMS, images, models.N_CLASSES),
    ):
        labels = [rng.randrange(classes) for _ in inputs]
        body = {"model_name": name, "family": family, "params": params,
                "dataset": {"inline": {"inputs": inputs, "labels": labels}},
                "training": {"epochs": 1}}  # fmt: skip
        _train(client, body)


def _tensor(rows: list[list[float]]) -> dict[str, Any]:
    import base64
    import struct

    data = b"".join(struct.pack(f"<{len(r)}f", *r) for r in rows)
    return {"dtype": "float32", "shape": [len(rows), len(rows[0])],
            "data": base64.b64encode(data).decode()}  # fmt: skip


def _image_tensor(n: int, seed: int) -> dict[str, Any]:
    """``n`` images of the benchmark's shape as a typed tensor [n, C, H, W]."""
    from workers import tensors

    return tensors.encode(models.sample_images(n, seed))


def torchqueue_rows(client: httpx.Client, plan: Plan, ceiling: dict[str, float]) -> list[Row]:
    _train_serving_models(client)
    url = f"{client.base_url}".rstrip("/") + "/v1/models/{}/predict"

    def body(inputs: Any, **extra: Any) -> bytes:
        return json.dumps({"inputs": inputs, **extra}).encode()

    mlp = url.format("bench-mlp")
    rows256 = models.sample_rows(256, seed=6)
    as_json, as_tensor = body(rows256), body(_tensor(rows256), outputs="tensor")
    texts = body(models.sample_texts(256, seed=6))
    lstm_url, cnn_url = url.format("bench-lstm"), url.format("bench-cnn")
    transformer_url = url.format("bench-transformer")
    images = body(_image_tensor(256, seed=6), outputs="tensor")
    big = {  # one caller after another, then BIG_CALLERS at once
        name: [load.http_load(u, b, n, requests=plan.big) for n in (1, BIG_CALLERS)]
        for name, u, b in (("json", mlp, as_json), ("tensor", mlp, as_tensor),
                           ("lstm", lstm_url, texts),
                           ("transformer", transformer_url, texts), ("cnn", cnn_url, images))
    }  # fmt: skip
    sec = "4 torchqueue sync predict, large requests"
    rows: list[Row] = []
    for name, figure, family, goal in (
        ("json", "mlp 256 rows/request, JSON", "mlp", None),
        ("tensor", "mlp 256 rows/request, tensor", "mlp", 0.15),
        ("lstm", "text_lstm 256 texts/request, JSON", "text_lstm", 0.5),
        ("transformer", "text_transformer 256 texts/request, JSON", "text_transformer", 0.5),
        ("cnn", "image_cnn 256 images/request, tensor", "image_cnn", None),
    ):
        for callers, result in zip((1, BIG_CALLERS), big[name], strict=True):
            rows.append(
                Row(sec, f"{figure}, x{callers}", result.throughput * 256, "pred/s",
                    f"in-process {family} b256", ceiling[f"{family}/b256"],
                    goal=(">=", goal) if goal else None)
            )  # fmt: skip
    return rows


def one_row_rows(system: System, plan: Plan, naive: dict[str, Any]) -> list[Row]:
    """1-row requests beside the HTTP ceiling (a bare ASGI endpoint, FastAPI with the
    route's model) and the naive Celery baseline; the API as one process, then two."""
    from ops.bench import sync

    sequential = plan.sequential
    figures = sync.baselines(system.home, sync.one_row_body(), plan.seconds, sequential)
    figures.update(sync.torchqueue(system, plan.seconds, sequential))
    naive_rows = [
        Row("4a sync predict against the HTTP ceiling", "1 row, 1 caller p50",
            figures["torchqueue"].seq.pct(50), "ms", "naive Celery p50", naive["seq"].pct(50)),
    ]  # fmt: skip
    return sync.rows(figures, naive["conc"]) + naive_rows


# Epochs enough for jobs of one to two seconds each on one CPU thread, so that a job's
# fixed costs (claim, data, model save, registration) weigh as they do in real use. Early
# stopping is off: the plain loop runs every epoch, so the job must too.
TRAIN_CASES = [
    ("mlp", "digits", {"epochs": 80, "batch_size": 64, "early_stopping_patience": None}),
    ("text_lstm", "sentiment", {"epochs": 15, "early_stopping_patience": None}),
    ("text_transformer", "sentiment", {"epochs": 4, "early_stopping_patience": None}),
    (
        "image_cnn",
        "digits_images",
        {"epochs": 10, "batch_size": 64, "early_stopping_patience": None},
    ),
]


def _between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def training_rows(client: httpx.Client) -> list[Row]:
    """Each case as a job on a warm worker (a one-epoch job of the same case first takes
    the one-off imports), from claimed to succeeded (the job row's ``started_at`` and
    ``finished_at``), beside a plain PyTorch loop over the same in-memory tensors at the
    worker's torch thread count. Plain loop and job take turns, twice, and each keeps its
    better run, so that a busy machine weighs on both alike. A second baseline is the
    plain loop with the fused optimizer the job uses: the job's own overhead, apart from
    what its faster optimizer saves."""
    from ops.gpu_check import plain_seconds
    from shared.config import get_settings

    threads = get_settings().torch_threads or None
    base = f"plain loop s, {threads or 'default'} thr."
    rows: list[Row] = []
    for family, dataset, training in TRAIN_CASES:
        body = {
            "model_name": f"bench-{family}-{dataset}",
            "family": family,
            "dataset": {"builtin": dataset},
            "training": training,
        }
        _train(client, {**body, "training": {**training, "epochs": 1}})
        plains: list[float] = []
        jobs: list[tuple[float, float, dict[str, Any]]] = []
        for _ in range(2):
            plains.append(plain_seconds(family, dataset, training, "cpu", threads=threads)[0])
            job, client_seconds = _train(client, body)
            jobs.append((_between(job["started_at"], job["finished_at"]), client_seconds, job))
        fused, _ = plain_seconds(family, dataset, training, "cpu", threads=threads, fused=True)
        plain = min(plains)
        claimed, client_seconds, job = min(jobs, key=lambda j: j[0])
        epochs = sum(h["seconds"] for h in job["result"]["history"])
        sec, case = "5 training", f"{family}/{dataset} e{training['epochs']}"
        rows += [
            Row(sec, f"{case} claimed→succeeded", claimed, "s", base, plain, goal=("<=", 1.05)),
            Row(sec, f"{case} claimed→succeeded", claimed, "s", "same, fused optimizer", fused),
            Row(sec, f"{case} epochs, train+val", epochs, "s", base, plain),
            Row(sec, f"{case} submit→succeeded", client_seconds, "s", base, plain),
        ]
    return rows


def render(rows: list[Row]) -> str:
    head = (
        f"{'figure':48} {'value':>12}  {'baseline':30} {'baseline value':>16} {'ratio':>8}"
        f"  {'target'}"
    )
    lines = [head, "-" * len(head)]
    section = ""
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append(f"[{section}]")
        lines.append(
            f"{r.figure:48} {_fmt(r.value, r.unit):>12}  {r.baseline:30} "
            f"{_fmt(r.baseline_value, r.unit):>16} {r.ratio:8.3f}  {r.verdict}"
        )
    return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if unit == "pred/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "jobs/s":
        return f"{value:,.0f}/s"
    if unit == "jobs":
        return f"{value:,.0f}"
    if unit == "MB/s":
        return f"{value:,.1f} MB/s"
    return f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements (< 1 min)")
    parser.add_argument("--json", type=Path, default=Path(".torchqueue/bench.json"))
    args = parser.parse_args()
    # Each of these builds rows of this module's table: imported here, not above.
    from ops.bench import batch_predict, dataset_train, dataset_upload, submit

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
            rows += torchqueue_rows(client, plan, ceiling)
            rows += training_rows(client)
        rows += one_row_rows(system, plan, naive)
        rows += dataset_upload.rows(system.api_url, 100_000 if args.quick else 1_000_000)
        n_scored = 200_000 if args.quick else 1_000_000
        rows += batch_predict.rows(batch_predict.measure(n_scored, 1))
    finally:
        system.stop()
    # Each with its own Redis, database and worker, set in its own environment: after the rest.
    rows += submit.all_rows(*((200, 50) if args.quick else (submit.JOBS, submit.INLINE_JOBS)))
    trained = dataset_train.measure(100_000 if args.quick else 1_000_000, 3)
    rows.append(
        Row(
            "6 data sets",
            f"{trained['rows']:,} x {trained['features']} stored, claimed→succeeded",
            trained["job_seconds"],
            "s",
            "plain loop, pyarrow load",
            trained["plain_seconds"],
            goal=("<=", 1.10),
        )
    )
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
        "rows": [{**asdict(r), "ratio": r.ratio, "verdict": r.verdict} for r in rows],
    }
    args.json.write_text(json.dumps(doc, indent=2))
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
