"""``torchqueue sweep``: start a hyperparameter sweep from a base job and a space file,
watch its trials in a table refreshed in place, list and cancel sweeps."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from api.client import Json
from ops.client_commands import call, echo_json

REFRESH_SECONDS = 1.0


def _load(path: str, what: str) -> Any:
    """A JSON or YAML file (YAML is a superset of JSON), or a clear error naming it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=what) from None
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not JSON or YAML: {exc}", param_hint=what) from None


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v, separators=(",", ":"))


def render(sweep: Json, columns: int = 120) -> str:
    """The sweep as a table: a line per trial (state, values, metric, epoch), the best
    marked with ``*``."""
    req = sweep["spec"]["request"]
    best = (sweep.get("best") or {}).get("number")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(sweep["counts"].items())) or "no trials yet"
    lines = [
        f"sweep {sweep['id']}  {sweep['state']}  {sweep['model_name']}  "
        f"{req['metric']} ({req['direction']})  {len(sweep['trials'])}/{req['trials']} trials, "
        f"{req['parallel']} at once: {counts}",
    ]
    if sweep.get("message"):
        lines.append(sweep["message"])
    keys = list(req["space"])
    short = [k.split(".", 1)[1] for k in keys]
    lines.append(
        f"  {'#':>4}  {'STATE':9}  {req['metric'][:14]:>14}  {'EPOCH':>5}  " + "  ".join(short)
    )
    for t in sweep["trials"]:
        mark = "*" if t["number"] == best else " "
        shown = t["value"] if t["value"] is not None else t.get("latest")
        metric = "-" if shown is None else f"{shown:.6g}" + ("" if t["value"] is not None else "…")
        values = "  ".join(_value(t["params"].get(k)) for k in keys)
        line = f"{mark} {t['number']:>4}  {t['state']:9}  {metric:>14}  {t['epoch']:>5}  {values}"
        lines.append(line[:columns])
    return "\n".join(lines)


def _watch(ctx: click.Context, sweep_id: str, live: bool) -> Json:
    """Show the sweep; while it runs and ``live``, redraw it in place until it ends."""
    tty = sys.stdout.isatty()
    while True:
        sweep = call(ctx, "sweep", sweep_id)
        if tty and live:
            click.echo("\x1b[H\x1b[J", nl=False)  # home, then clear: redrawn in place
        if not live or tty or sweep["state"] != "running":
            click.echo(render(sweep))
        if not live or sweep["state"] != "running":
            return sweep
        time.sleep(REFRESH_SECONDS)


@click.group()
def sweep() -> None:
    """Hyperparameter sweeps: many training jobs, chosen by a search (Optuna)."""


@sweep.command("start")
@click.option("--base", "base_file", required=True, help="the base training job (JSON or YAML)")
@click.option("--space", "space_file", required=True, help="the search space (JSON or YAML)")
@click.option("--trials", type=int, required=True, help="how many trials in all")
@click.option("--parallel", type=int, default=1, show_default=True, help="trials at once")
@click.option("--metric", default="val_loss", show_default=True, help="e.g. val_accuracy")
@click.option("--maximize/--minimize", default=None, help="default: minimize a loss")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default="tpe")
@click.option("--pruner", type=click.Choice(["median", "successive_halving", "none"]),
              default="none", show_default=True)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--promote", help="an alias to point at the best trial's version at the end")
@click.option("--watch", "watch_", is_flag=True, help="then show the trials until it ends")
@click.pass_context
def sweep_start(ctx: click.Context, base_file: str, space_file: str, trials: int, parallel: int,
                metric: str, maximize: bool | None, sampler: str, pruner: str, seed: int,
                promote: str | None, watch_: bool) -> None:  # fmt: skip
    """Start a sweep: --base names a job as `POST /v1/jobs/train` takes it, --space the
    fields it varies, e.g. {"training.learning_rate": {"type": "log_uniform", "low":
    0.0001, "high": 0.1}, "params.dropout": {"type": "uniform", "low": 0, "high": 0.5}}."""
    body: dict[str, Any] = {
        "base": _load(base_file, "--base"),
        "space": _load(space_file, "--space"),
        "trials": trials,
        "parallel": parallel,
        "metric": metric,
        "sampler": sampler,
        "pruner": pruner,
        "seed": seed,
    }
    if maximize is not None:
        body["direction"] = "maximize" if maximize else "minimize"
    if promote:
        body["promote"] = promote
    made = call(ctx, "start_sweep", body)
    click.echo(f"sweep {made['id']} {made['state']}: {len(made['trials'])} trials queued")
    if watch_:
        _watch(ctx, made["id"], live=True)


@sweep.command("show")
@click.argument("sweep_id")
@click.option("--once", is_flag=True, help="print it once, not until it ends")
@click.option("--json", "as_json", is_flag=True, help="the API's answer as JSON")
@click.pass_context
def sweep_show(ctx: click.Context, sweep_id: str, once: bool, as_json: bool) -> None:
    """The sweep's trials, refreshed in place while it runs (best marked *)."""
    if as_json:
        echo_json(call(ctx, "sweep", sweep_id))
        return
    _watch(ctx, sweep_id, live=not once)


@sweep.command("list")
@click.pass_context
def sweep_list(ctx: click.Context) -> None:
    page = call(ctx, "sweeps", limit=500)
    click.echo(f"{'ID':36}  {'STATE':9}  {'MODEL':24}  {'TRIALS':>9}  CREATED")
    for s in page["items"]:
        made = sum(s["counts"].values())
        total = s["spec"]["request"]["trials"]
        click.echo(f"{s['id']:36}  {s['state']:9}  {s['model_name'][:24]:24}  "
                   f"{made:>4}/{total:<4}  {s['created_at'][:19]}")  # fmt: skip


@sweep.command("cancel")
@click.argument("sweep_id")
@click.pass_context
def sweep_cancel(ctx: click.Context, sweep_id: str) -> None:
    done = call(ctx, "cancel_sweep", sweep_id)
    click.echo(f"sweep {done['id']} {done['state']}")
