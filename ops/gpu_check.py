"""The GPU path, end to end, on a machine with a GPU: a worker pinned to GPU 0 trains and
predicts through the real queue; the table shows that the job ran on that device with
bf16 autocast, and its training samples/s beside a plain PyTorch loop over the same
in-memory tensors on the same device.

    .venv/bin/python -m ops.gpu_check            # needs a GPU (NVML or nvidia-smi)
    .venv/bin/python -m ops.gpu_check --cpu      # the same path on the CPU, to check it

It starts its own embedded Redis and SQLite database in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = [
    ("text_lstm", "sentiment", {"epochs": 10, "batch_size": 32, "learning_rate": 0.01}),
    ("mlp", "digits", {"epochs": 30, "batch_size": 64, "learning_rate": 0.01}),
]


def _env(home: Path) -> subprocess.Popen[bytes]:
    from ops import embedded_redis

    redis, url = embedded_redis.start(home / "redis")
    os.environ.update(
        TORCHQUEUE_HOME=str(home),
        TORCHQUEUE_REDIS_URL=url,
        TORCHQUEUE_AUTH="off",
        TORCHQUEUE_PROGRESS_INTERVAL_SECONDS="5",
    )
    return redis


def _submit(family: str, dataset: str, training: dict[str, Any]) -> str:
    from shared.db import store
    from shared.db.session import session_scope
    from shared.enqueue import send_job
    from shared.jobstate import JobKind
    from shared.routing import train_queue
    from shared.schemas import TrainRequest, resolve_train

    req = TrainRequest.model_validate(
        {
            "model_name": f"gpu-check-{family}",
            "family": family,
            "dataset": {"builtin": dataset},
            "training": training,
        }
    )
    spec = resolve_train(req)
    with session_scope() as s:
        job = store.create_job(
            s,
            kind=JobKind.train,
            model_name=spec.model_name,
            spec=spec.model_dump(mode="json"),
            queue=train_queue("default", 1, 0),
        )
    send_job(job)
    return job.id


def _wait(job_id: str, timeout: float = 1800) -> Any:
    from shared.db import store
    from shared.db.session import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as s:
            job = store.get_job(s, job_id)
        if job.state.is_terminal():
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def plain_loop(family: str, dataset: str, training: dict[str, Any], device: str) -> float:
    """Samples/s of a plain loop: same model, tensors, epochs and batch size."""
    import torch
    from torch import nn

    from shared.schemas import TrainRequest, resolve_train
    from workers import data
    from workers.families import BUILDERS
    from workers.preprocess import LabelEncoder

    spec = resolve_train(
        TrainRequest.model_validate(
            {
                "model_name": "plain",
                "family": family,
                "dataset": {"builtin": dataset},
                "training": training,
            }
        )
    )
    raw = data.load(spec.dataset)
    builder = BUILDERS[family]
    pre = builder.fit_preprocessor(spec.params, raw.inputs)
    enc = LabelEncoder().fit(raw.labels)
    n = int(len(raw.inputs) * 0.8)
    x, y = pre.encode(raw.inputs)[:n].to(device), enc.encode(raw.labels)[:n].to(device)
    model = builder.build(spec.params, pre, len(enc.classes)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=spec.training.learning_rate)
    bs, epochs = spec.training.batch_size, spec.training.epochs
    started = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(
                torch.device(device).type, torch.bfloat16, enabled=device.startswith("cuda")
            ):
                out = model(x[idx])
            nn.functional.cross_entropy(out.float(), y[idx]).backward()
            opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n * epochs / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="check the path on the CPU")
    args = parser.parse_args()
    from workers.devices import discover

    gpus = discover()
    if not gpus and not args.cpu:
        print("no GPU found (NVML, nvidia-smi); run with --cpu to check the path on the CPU")
        return 2
    with tempfile.TemporaryDirectory(prefix="tq-gpu-check-") as tmp:
        redis = _env(Path(tmp))
        from shared.db.migrate import upgrade

        upgrade()
        group = ["--cpu"] if args.cpu else ["--gpus", "0"]
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", "worker", *group],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            rows = [_check(case, "cpu" if args.cpu else "cuda:0") for case in CASES]
        finally:
            worker.terminate()
            worker.wait(60)
            redis.terminate()
            redis.wait(10)
    print(
        f"{'case':22} {'device':28} {'precision':14} {'torchqueue':>12} {'plain loop':>12} "
        f"{'ratio':>6} {'val':>6}"
    )
    for row in rows:
        print(
            f"{row[0]:22} {row[1][:28]:28} {row[2]:14} {row[3]:10.0f}/s {row[4]:10.0f}/s "
            f"{row[3] / row[4]:6.2f} {row[5]:6.3f}"
        )
    return 0


def _check(case: tuple[str, str, dict[str, Any]], device: str) -> tuple[Any, ...]:
    family, dataset, training = case
    job = _wait(_submit(family, dataset, training))
    if job.state != "succeeded":
        raise SystemExit(f"{family}: {job.state}: {job.error}")
    usage = job.usage or {}
    train_seconds = sum(r["seconds"] for r in job.result["history"])
    samples_per_second = usage["samples"] / train_seconds
    baseline = plain_loop(family, dataset, training, device)
    metrics = job.result["metrics"]
    return (
        f"{family}/{dataset}",
        usage["device"],
        usage["precision"],
        samples_per_second,
        baseline,
        metrics.get("val_accuracy", 0.0),
    )


if __name__ == "__main__":
    sys.exit(main())
