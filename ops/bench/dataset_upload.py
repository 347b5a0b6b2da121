"""Upload of a CSV (1 million rows × 20 columns) through the API, with the Python client
as a user would, in MB/s, beside writing the same bytes to the same artifact store
directly: a copy of the file put there with ``put_file`` (the ceiling). Each is measured
twice, taking turns, and keeps its better run.

    .venv/bin/python -m ops.bench.dataset_upload [--rows N] [--json PATH]

It starts its own embedded Redis, SQLite database and API in a temporary home (no
workers: an upload needs none), and stops them. ``rows(api_url)`` gives the same figures
to the suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from api.client import Client
from ops.bench.suite import Row
from ops.bench.system import System

ROWS = 1_000_000
COLUMNS = 20  # 19 features and a label
MB = 1e6


def make_csv(path: Path, rows: int = ROWS, seed: int = 0) -> int:
    """``rows`` rows of 19 numbers with 6 decimals and an integer label; its size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    step = 100_000
    names = [f"x{i}" for i in range(1, COLUMNS)] + ["label"]
    with pa_csv.CSVWriter(path, pa.schema([(n, pa.float64()) for n in names[:-1]] +
                                          [("label", pa.int64())])) as writer:  # fmt: skip
        for start in range(0, rows, step):
            n = min(step, rows - start)
            x = np.round(rng.normal(size=(n, COLUMNS - 1)), 6)
            columns = [pa.array(x[:, i]) for i in range(COLUMNS - 1)]
            columns.append(pa.array(rng.integers(0, 3, size=n)))
            writer.write_table(pa.table(columns, names=names))
    return path.stat().st_size


def direct_seconds(csv: Path) -> float:
    """The ceiling: the same bytes written into the store (a copy beside it, then put_file,
    a rename for a local store), as the API's own last step does with its stored file."""
    from shared.artifacts import open_store

    store = open_store()
    local = store.local_path("bench")
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=local.parent if local else None, prefix=".bench-"))
    key = f"bench/direct-{time.monotonic_ns()}.csv"
    try:
        started = time.perf_counter()
        copy = scratch / "copy.csv"
        shutil.copyfile(csv, copy)
        store.put_file(key, copy)
        return time.perf_counter() - started
    finally:
        store.delete(key)
        shutil.rmtree(scratch, ignore_errors=True)


def upload_seconds(api_url: str, csv: Path) -> tuple[float, float]:
    """Through the API with the client: (until the last byte was sent, until the 201)."""
    sent_at = 0.0
    size = csv.stat().st_size

    def progress(sent: int, total: int | None) -> None:
        nonlocal sent_at
        if sent == size:
            sent_at = time.perf_counter()

    with Client(api_url, timeout=600) as client:
        started = time.perf_counter()
        made = client.upload_dataset(csv, "bench-upload", label="label", progress=progress)
        done = time.perf_counter()
        client.delete_dataset_version("bench-upload", made["version"])
    return sent_at - started, done - started


def rows(api_url: str, n_rows: int = ROWS, runs: int = 2) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="tq-bench-csv-"))
    try:
        csv = work / "table.csv"
        size = make_csv(csv, n_rows)
        directs, uploads = [], []
        for _ in range(runs):
            directs.append(direct_seconds(csv))
            uploads.append(upload_seconds(api_url, csv))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ceiling = size / MB / min(directs)
    sent = size / MB / min(u[0] for u in uploads)
    whole = size / MB / min(u[1] for u in uploads)
    sec = f"6 data set upload, {n_rows:,} × {COLUMNS} CSV, {size / MB:,.0f} MB"
    base = "put_file of a copy, same store"
    return [
        Row(sec, "client upload, submit→201 (stored)", whole, "MB/s", base, ceiling),
        Row(sec, "client upload, body sent", sent, "MB/s", base, ceiling),
    ]


class ApiOnly(System):
    """Redis, a SQLite database and the API: what an upload needs."""

    def start(self) -> None:
        self.base()
        self.api()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.api_ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API is not ready within {timeout} s; logs in {self.home}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--json", type=Path, default=Path(".torchqueue/bench-upload.json"))
    args = parser.parse_args()
    system = ApiOnly()
    try:
        system.start()
        system.wait_ready()
        figures = rows(system.api_url, args.rows)
    finally:
        system.stop()
    print(f"[{figures[0].section}]")
    for r in figures:
        print(f"{r.figure:36} {r.value:9,.1f} MB/s   {r.baseline:30} "
              f"{r.baseline_value:9,.1f} MB/s   ratio {r.ratio:.3f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = [{**asdict(r), "ratio": r.ratio} for r in figures]
    args.json.write_text(json.dumps(doc, indent=2))
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
