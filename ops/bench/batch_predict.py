"""Batch prediction throughput: a predict job over a stored data set of a million rows, run
by a real worker from claimed to succeeded (the job row's ``started_at`` and
``finished_at``: reading the Parquet file, scoring, writing the parts and combining them
included), beside in-process batched inference over the same rows already in memory
(the same model and weights, the same preprocessing and forward-pass size, the same
torch thread count). The target: at least half the in-process throughput.

    .venv/bin/python -m ops.bench.batch_predict [--rows 1000000] [--threads 1]

It starts its own embedded Redis, SQLite database and CPU worker in a temporary home, and
stops them. Job and in-process runs take turns, twice, and each keeps its better run.
``rows(...)`` gives the same figures as rows of ``ops.bench.suite``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.models import MLP_PARAMS, N_CLASSES
from ops.bench.system import System

N_FEATURES = 20
FEATURES = [f"x{i}" for i in range(N_FEATURES)]
ROOT = Path(__file__).resolve().parents[2]


def _table(rows: int, seed: int = 0) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (rows, N_FEATURES)).astype(np.float32)
    columns = {name: pa.array(x[:, i]) for i, name in enumerate(FEATURES)}
    return pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), **columns})


def _store(name: str, table: Any) -> Any:
    import pyarrow.parquet as pq

    from shared.artifacts import open_store
    from shared.db import datasets
    from shared.db.session import session_scope
    from workers.dataset_files import sha256_of

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        pq.write_table(table, path)
        sha256, size = sha256_of(path), path.stat().st_size
        uri = open_store().put_file(f"datasets/{name}/v1.parquet", path)
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    with session_scope() as s:
        return datasets.create_version(
            s, name=name, source="upload", format="parquet", uri=uri, sha256=sha256,
            size=size, rows=table.num_rows, columns=columns, created_by=None, admin=True,
        )  # fmt: skip


def _wait(client: Any, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    from api.client import Client

    job: dict[str, Any] = Client(http=client).wait(job_id, timeout=timeout, poll=0.05)
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
    return job


def _seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    return (datetime.fromisoformat(job["finished_at"]) - started).total_seconds()


def _predict(client: Any, model: str, dataset: str) -> dict[str, Any]:
    body = {"model_name": model, "dataset": {"name": dataset, "features": FEATURES, "id": "id"}}
    job = client.post("/v1/jobs/predict", json=body)
    if job.status_code != 201:
        raise RuntimeError(f"the prediction was refused: {job.text}")
    return _wait(client, job.json()["id"])


def _train(client: Any) -> str:
    rng = np.random.default_rng(1)
    inputs = np.round(rng.normal(0.0, 1.0, (2000, N_FEATURES)), 4).tolist()
    labels = rng.integers(0, N_CLASSES, 2000).tolist()
    body = {"model_name": "bench-batch", "family": "mlp", "params": MLP_PARAMS,
            "dataset": {"inline": {"inputs": inputs, "labels": labels}},
            "training": {"epochs": 1}}  # fmt: skip
    job = client.post("/v1/jobs/train", json=body)
    if job.status_code != 201:
        raise RuntimeError(f"training was refused: {job.text}")
    _wait(client, job.json()["id"])
    return "bench-batch"


def in_process(model: str, table: Any, threads: int) -> float:
    """Seconds to score ``table``'s rows, already in memory, with the model: preprocess,
    forward passes of ``BATCH_ROWS`` rows under inference mode, probabilities."""
    import torch

    from shared.db import model_registry
    from shared.db.session import session_scope
    from workers import inference
    from workers.batch_predict import BATCH_ROWS

    torch.set_num_threads(threads)
    with session_scope() as s:
        version = model_registry.get_model_version(s, model, "latest")
    loaded = inference.get_model(version)
    x = torch.from_numpy(np.stack([table.column(f).to_numpy() for f in FEATURES], axis=1))
    started = time.perf_counter()
    encoded = loaded.pre.encode(x)  # type: ignore[arg-type]  # rows as a tensor
    scores = loaded.scores(loaded.forward(encoded, BATCH_ROWS))
    scores.argmax(dim=1)
    return time.perf_counter() - started


def measure(rows: int, threads: int) -> dict[str, float]:
    """Rows/s of the job and of the in-process baseline, best of two turns each."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    table = _table(rows)
    with TestClient(create_app()) as client:
        model = _train(client)
        _store("bench-rows", table)
        _store("bench-warm", _table(1000, seed=2))
        _predict(client, model, "bench-warm")  # the worker's one-off imports and model load
        job_s, base_s = float("inf"), float("inf")
        for _ in range(2):
            base_s = min(base_s, in_process(model, table, threads))
            job_s = min(job_s, _seconds(_predict(client, model, "bench-rows")))
    return {"rows": rows, "job_rows_s": rows / job_s, "in_process_rows_s": rows / base_s,
            "job_s": job_s, "in_process_s": base_s}  # fmt: skip


def rows(figures: dict[str, float]) -> list[Any]:
    """The figures as rows of ``ops.bench.suite``'s table."""
    from ops.bench.suite import Row

    case = f"{int(figures['rows']):,} rows x {N_FEATURES} features, mlp"
    return [
        Row("6 batch predictions", f"{case} claimed→succeeded", figures["job_rows_s"], "pred/s",
            "in-process batched, in memory", figures["in_process_rows_s"], goal=(">=", 0.5)),
    ]  # fmt: skip


class _System(System):
    """An embedded Redis, a SQLite database and one CPU worker, in a temporary home."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = threads

    def __enter__(self) -> _System:
        self.base(self.threads)
        self.worker()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    args = parser.parse_args()
    with _System(args.threads):
        figures = measure(args.rows, args.threads)
    ratio = figures["job_rows_s"] / figures["in_process_rows_s"]
    print(f"{'figure':46} {'rows/s':>12} {'seconds':>9}")
    print(f"{'batch prediction job, claimed→succeeded':46} {figures['job_rows_s']:12,.0f} "
          f"{figures['job_s']:9.2f}")  # fmt: skip
    print(f"{'in-process batched inference, in memory':46} "
          f"{figures['in_process_rows_s']:12,.0f} {figures['in_process_s']:9.2f}")  # fmt: skip
    print(
        f"ratio {ratio:.3f} (target >= 0.5: {'met' if ratio >= 0.5 else 'missed'}); "
        f"{int(figures['rows']):,} rows x {N_FEATURES} features, {args.threads} thread(s)"
    )


if __name__ == "__main__":
    main()
