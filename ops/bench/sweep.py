"""Sweeps on the queue: a 40-trial sweep of ``mlp`` on digits (learning rate, widths,
dropout, batch size), 4 trials at a time on 4 workers, run three ways in one system:
TPE with median pruning, TPE without pruning, and random search without pruning. It
prints each one's wall time and best validation accuracy, and the two ratios the issue
sets targets for: pruning's wall time against none (≤ 0.5), and TPE's best against
random search's (≥ 1.0).

    python -m ops.bench.sweep [--quick] [--json PATH]     (make bench-sweep)
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ops.bench.system import System, pings

WORKERS = 4
SPACE: dict[str, Any] = {
    "training.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 0.3},
    "params.hidden_sizes": {"type": "choice", "values": [[32], [64], [128], [64, 64], [128, 64]]},
    "params.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
    "training.batch_size": {"type": "choice", "values": [16, 32, 64, 128]},
}
RUNS = [
    ("tpe, median pruning", "tpe", "median"),
    ("tpe, no pruning", "tpe", "none"),
    ("random, no pruning", "random", "none"),
]


def _sweep(
    api: str, name: str, trials: int, epochs: int, sampler: str, pruner: str
) -> dict[str, Any]:
    base = {"model_name": name, "family": "mlp", "dataset": {"builtin": "digits"},
            "training": {"epochs": epochs, "early_stopping_patience": None, "seed": 0}}  # fmt: skip
    body = {"base": base, "space": SPACE, "trials": trials, "parallel": WORKERS,
            "metric": "val_accuracy", "sampler": sampler, "pruner": pruner, "seed": 1}  # fmt: skip
    made = httpx.post(f"{api}/v1/sweeps", json=body, timeout=60)
    made.raise_for_status()
    sweep_id = made.json()["id"]
    while True:
        sweep: dict[str, Any] = httpx.get(f"{api}/v1/sweeps/{sweep_id}", timeout=60).json()
        if sweep["state"] != "running":
            return sweep
        time.sleep(0.2)


def _wall(sweep: dict[str, Any]) -> float:
    started = datetime.fromisoformat(sweep["created_at"])
    return (datetime.fromisoformat(sweep["finished_at"]) - started).total_seconds()


def measure(quick: bool) -> list[dict[str, Any]]:
    trials, epochs = (12, 15) if quick else (40, 30)
    system = System()
    try:
        system.base(TORCHQUEUE_FAKE_GPUS=str(WORKERS))
        system.api()
        system.spawn("workers", ["-m", "ops.cli", "worker", "--gpus", "all"])
        system.spawn("reaper", ["-m", "ops.cli", "reaper"])
        from shared.celery_app import get_celery

        deadline = time.monotonic() + 180
        while pings(get_celery(), "gpu") < WORKERS or not system.api_ready():
            system.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not start; logs in {system.home}")
            time.sleep(0.5)
        # Each worker's first job loads what training imports (seconds): not measured.
        _sweep(system.api_url, "bench-warm-up", 2 * WORKERS, 1, "random", "none")
        rows = []
        for label, sampler, pruner in RUNS:
            done = _sweep(system.api_url, f"bench-{sampler}-{pruner}", trials, epochs,
                          sampler, pruner)  # fmt: skip
            rows.append({"run": label, "wall_s": round(_wall(done), 2),
                         "best_val_accuracy": (done.get("best") or {}).get("value"),
                         "pruned": done["counts"].get("pruned", 0),
                         "complete": done["counts"].get("complete", 0)})  # fmt: skip
            print(f"{label:22} {rows[-1]}", flush=True)
        return rows
    finally:
        system.stop()


def report(rows: list[dict[str, Any]]) -> dict[str, float]:
    by = {r["run"]: r for r in rows}
    pruned, full, random = (by[label] for label, _, _ in RUNS)
    ratios = {
        "pruning wall / no pruning wall (target <= 0.5)": pruned["wall_s"] / full["wall_s"],
        "tpe best / random best (target >= 1.0)": full["best_val_accuracy"]
        / random["best_val_accuracy"],
        "tpe+pruning best / random best": pruned["best_val_accuracy"] / random["best_val_accuracy"],
    }
    print()
    print(f"{'run':22}  {'wall s':>8}  {'best val_accuracy':>17}  {'pruned':>6}  {'complete':>8}")
    for r in rows:
        print(f"{r['run']:22}  {r['wall_s']:>8.2f}  {r['best_val_accuracy']:>17.4f}  "
              f"{r['pruned']:>6}  {r['complete']:>8}")  # fmt: skip
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 trials of 15 epochs")
    parser.add_argument("--json", type=Path, default=Path(".torchqueue/bench-sweep.json"))
    args = parser.parse_args()
    rows = measure(args.quick)
    ratios = report(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
