"""The GPU path, end to end, on a machine with a GPU: a worker pinned to GPU 0 trains and
predicts through the real queue; the table shows that the job ran on that device with
bf16 autocast, and its training samples/s (from claimed to succeeded) beside a plain
PyTorch loop over the same in-memory tensors on the same device.

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

from shared import processes

# Early stopping off: the plain loop beside each job runs every epoch.
_OFF = {"early_stopping_patience": None}
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("text_lstm", "sentiment", {"epochs": 10, "batch_size": 32, "learning_rate": 0.01, **_OFF}),
    ("mlp", "digits", {"epochs": 30, "batch_size": 64, "learning_rate": 0.01, **_OFF}),
    ("text_transformer", "sentiment", {"epochs": 10, "learning_rate": 0.003, **_OFF}),
    ("image_cnn", "digits_images", {"epochs": 10, "batch_size": 64, **_OFF}),
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
    from shared.db import jobs
    from shared.db.session import session_scope
    from shared.enqueue import send_job
    from shared.jobstate import JobKind
    from shared.routing import DEFAULT_POOL, train_queue
    from shared.schemas import TrainRequest
    from shared.validation import resolve_train

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
        job = jobs.create_job(
            s,
            kind=JobKind.train,
            model_name=spec.model_name,
            spec=spec.model_dump(mode="json"),
            queue=train_queue(DEFAULT_POOL, 1, 0),
        )
    send_job(job)
    return job.id


def _wait(job_id: str, timeout: float = 1800) -> Any:
    from shared.db import job_reads
    from shared.db.session import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as s:
            job = job_reads.get_job(s, job_id)
        if job.state.is_terminal():
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def _spec(family: str, dataset: str, training: dict[str, Any]) -> Any:
    from shared.schemas import TrainRequest
    from shared.validation import resolve_train

    body = {
        "model_name": "plain",
        "family": family,
        "dataset": {"builtin": dataset},
        "training": training,
    }
    return resolve_train(TrainRequest.model_validate(body))


def plain_seconds(
    family: str,
    dataset: str,
    training: dict[str, Any],
    device: str,
    *,
    fused: bool = False,
    threads: int | None = None,
) -> tuple[float, int]:
    """Seconds and samples of a plain PyTorch loop over the job's training tensors, already
    in memory: the same model (same initial weights), rows, loss, epochs, batch size and
    optimizer settings, with ``threads`` torch threads; no validation, checkpoints or
    progress. The optimizer is PyTorch's default implementation, or, with ``fused``, the
    fused kernels the training loop uses."""
    import contextlib

    import torch

    from workers.training import prepare

    spec = _spec(family, dataset, training)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        run = prepare(spec, torch.device(device))
        model, x, y, loss_fn = run.net, run.tr.x, run.tr.y, run.head.loss
        t = spec.training
        options = {"lr": t.learning_rate, "weight_decay": t.weight_decay, "fused": fused or None}
        opt: torch.optim.Optimizer = (
            torch.optim.SGD(model.parameters(), momentum=t.momentum, **options)
            if t.optimizer == "sgd"
            else torch.optim.Adam(model.parameters(), **options)
        )
        cuda = device.startswith("cuda")
        n, bs = len(x), t.batch_size
        model.train()
        started = time.perf_counter()
        for _ in range(t.epochs):
            perm = torch.randperm(n, device=device)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                opt.zero_grad(set_to_none=True)
                autocast = torch.autocast("cuda", torch.bfloat16) if cuda else None
                with autocast or contextlib.nullcontext():
                    out = model(x[idx])
                loss_fn(out, y[idx]).backward()
                opt.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, n * t.epochs
    finally:
        torch.set_num_threads(before)


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
        worker = processes.spawn([sys.executable, "-m", "ops.cli", "worker", *group], log=log)
        try:
            rows = [_check(case, "cpu" if args.cpu else "cuda:0") for case in CASES]
        finally:
            processes.stop(worker, timeout=60)
            processes.stop(redis, timeout=10)
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
    # The job's whole time on its worker, from claimed to succeeded.
    seconds = (job.finished_at - job.started_at).total_seconds()
    samples_per_second = usage["samples"] / seconds
    from shared.config import get_settings

    # At the worker's thread count (0: torch's own choice, in both).
    plain, samples = plain_seconds(
        family, dataset, training, device, threads=get_settings().torch_threads or None
    )
    baseline = samples / plain
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
