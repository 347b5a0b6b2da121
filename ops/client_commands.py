"""The client side of the command line: train, predict, jobs, models (data sets are in
``ops.dataset_commands``). Built on ``api.client``; an error answer prints its detail and
field, never a traceback."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from api.client import OUTPUT_TYPES, ApiError, Client, Json, job_error
from ops.family_commands import FamilyOption
from shared.formats import SUFFIXES


def open_client(ctx: click.Context) -> Client:
    obj = ctx.find_root().obj
    return Client(obj.get("api_url"), api_key=obj.get("api_key"))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def message_of(exc: ApiError) -> str:
    where = f" (field: {exc.field})" if exc.field else ""
    return f"{exc.detail}{where}"


def call(ctx: click.Context, method: str, *args: Any, **kwargs: Any) -> Any:
    with open_client(ctx) as client:
        try:
            result = getattr(client, method)(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(message_of(exc)) from None
    return result


class NotFinite(ValueError):
    """NaN or Infinity in JSON: Python reads them, JSON has no such numbers."""


def _refuse_constant(name: str) -> Any:
    raise NotFinite(name)


def _loads(text: str) -> Any:
    """JSON, refusing NaN and Infinity (which Python's parser takes, and JSON has not)."""
    return json.loads(text, parse_constant=_refuse_constant)


def _json_option(value: str | None, name: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
        data = _loads(text)
    except NotFinite as exc:
        raise click.BadParameter(f"{exc} is not a number JSON has", param_hint=name) from None
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"not JSON (or @file of JSON): {exc}", param_hint=name) from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return data


# --- progress ----------------------------------------------------------------------------


class ProgressBar:
    """One line, redrawn in place on a terminal; a new line per change elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = ""

    def update(self, job: Json) -> None:
        self.show(render(job, _columns()))

    def show(self, line: str) -> None:
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _columns() -> int:
    return shutil.get_terminal_size((100, 20)).columns


def _bar(fraction: float, width: int = 24) -> str:
    done = round(min(max(fraction, 0.0), 1.0) * width)
    return "[" + "#" * done + "." * (width - done) + "]"


def render(job: Json, columns: int = 100) -> str:
    progress = job.get("progress") or {}
    state = job["state"]
    fraction = float(progress.get("fraction", 1.0 if state == "succeeded" else 0.0))
    text = f"{_bar(fraction)} {state}"
    if "rows_done" in progress:  # a batch prediction, chunk by chunk
        text += f" rows {progress['rows_done']:,}/{progress.get('rows', 0):,}"
    elif progress:
        text += f" epoch {progress.get('epoch')}/{progress.get('epochs')}"
        metrics = progress.get("metrics") or {}
        shown = [
            f"{k}={v:.4g}"
            for k, v in metrics.items()
            if k not in ("epoch", "seconds") and isinstance(v, int | float)
        ]
        text += "  " + " ".join(shown)
    return text[: max(columns - 1, 20)]


MB = 1e6


def render_transfer(done: int, total: int | None, seconds: float) -> str:
    """Bytes moved: ``[####....]  45%  120.3/260.0 MB  85.2 MB/s``."""
    rate = done / MB / seconds if seconds > 0 else 0.0
    if not total:
        return f"{done / MB:,.1f} MB  {rate:,.1f} MB/s"
    fraction = done / total
    return (
        f"{_bar(fraction)} {fraction:4.0%}  {done / MB:,.1f}/{total / MB:,.1f} MB  {rate:,.1f} MB/s"
    )


class TransferBar:
    """A ``Progress`` callback of the client drawing a byte count as a bar: redrawn at
    most ten times a second on a terminal, once per tenth of the whole elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.bar = ProgressBar(stream)
        self.started = time.monotonic()
        self.shown_at = 0.0
        self.step = -1

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if self.bar.tty:
            if now - self.shown_at < 0.1 and not final:
                return
        else:
            step = done * 10 // total if total else done // (100 * 2**20)
            if step == self.step and not final:
                return
            self.step = step
        self.shown_at = now
        self.bar.show(render_transfer(done, total, now - self.started))

    def close(self) -> None:
        self.bar.close()


def _wait_and_report(ctx: click.Context, job: Json, timeout: float | None) -> Json:
    bar = ProgressBar()
    try:
        job = call(ctx, "wait", job["id"], timeout=timeout, on_update=bar.update)
    finally:
        bar.close()
    _summary(job)
    return job


def _summary(job: Json) -> None:
    if job["state"] == "succeeded" and job["kind"] == "train":
        click.echo(
            f"{job['model_name']} version {job['model_version']}: "
            f"{json.dumps((job.get('result') or {}).get('metrics'))}"
        )
    elif job["state"] == "failed":
        raise click.ClickException(f"job {job['id']} failed: {job_error(job)}")


# --- commands ----------------------------------------------------------------------------


def parse_version(text: str, hint: str) -> int | str:
    if text == "latest" or (text.isdigit() and int(text) >= 1):
        return int(text) if text.isdigit() else text
    raise click.BadParameter(f"a version is a number or latest, not {text!r}", param_hint=hint)


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _inline(data_file: str) -> Json:
    path = Path(data_file)
    upload = (
        f"upload it with `torchqueue datasets upload {data_file} --name NAME`, then train "
        "with `--dataset NAME --label COLUMN`"
    )
    if path.suffix.lower() in SUFFIXES:
        raise click.BadParameter(f"{path.name} is a table, not JSON: {upload}", param_hint="--data")
    try:
        return {"inline": _loads(path.read_text())}
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"not JSON ({exc}); for a table (CSV, Parquet, JSON Lines, npy, npz), {upload}",
            param_hint="--data",
        ) from None


def _stored(
    dataset: str,
    version: str,
    label: str | None,
    features: str | None,
    text: str | None,
    validation: str | None,
) -> Json:
    if not label:
        raise click.UsageError("--dataset needs --label COLUMN: the column to predict")
    spec: Json = {"name": dataset, "version": parse_version(version, "--dataset-version")}
    spec["label"] = label
    if features:
        spec["features"] = _names(features)
    if text:
        spec["text"] = text
    if validation:
        name, _, number = validation.partition(":")
        spec["validation"] = {
            "name": name,
            "version": parse_version(number or "latest", "--validation-dataset"),
        }
    return spec


@click.command()
@click.argument("model_name")
@click.option("--family", required=True, cls=FamilyOption)
@click.option(
    "--dataset",
    help="an uploaded data set (`torchqueue datasets upload`), trained on with --label",
)
@click.option("--dataset-version", default="latest", show_default=True)
@click.option("--label", help="with --dataset: the column to predict")
@click.option("--features", help="with --dataset: input columns, a,b,c (default: all others)")
@click.option("--text", "text_column", help="with --dataset, for text families: the text column")
@click.option(
    "--validation-dataset",
    help="with --dataset: NAME[:VERSION] to validate on instead of a split of the data",
)
@click.option(
    "--builtin", help="a built-in data set: iris, wine, breast_cancer, digits, diabetes, sentiment"
)
@click.option(
    "--data",
    "data_file",
    type=click.Path(exists=True, dir_okay=False),
    help='a small JSON file {"inputs": [...], "labels": [...]}',
)
@click.option("--params", help="family parameters as JSON (or @file)")
@click.option("--training", help="training settings as JSON (or @file)")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", "learning_rate", type=float, help="learning rate")
@click.option("--wait", "wait_", is_flag=True, help="wait, showing progress, until it ends")
@click.pass_context
def train(
    ctx: click.Context,
    model_name: str,
    family: str,
    dataset: str | None,
    dataset_version: str,
    label: str | None,
    features: str | None,
    text_column: str | None,
    validation_dataset: str | None,
    builtin: str | None,
    data_file: str | None,
    params: str | None,
    training: str | None,
    epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    wait_: bool,
) -> None:
    """Submit a training job: on an uploaded data set (--dataset), a built-in one
    (--builtin) or a few rows of JSON (--data)."""
    if sum(map(bool, (builtin, data_file, dataset))) != 1:
        raise click.UsageError(
            "give exactly one of --builtin or --data (inline JSON), or --dataset (uploaded)"
        )
    given = {"--label": label, "--features": features, "--text": text_column,
             "--validation-dataset": validation_dataset}  # fmt: skip
    stray = [k for k, v in given.items() if v]
    if stray and not dataset:
        raise click.UsageError(f"{stray[0]} goes with --dataset")
    if dataset:
        spec = _stored(dataset, dataset_version, label, features, text_column, validation_dataset)
    elif data_file:
        spec = _inline(data_file)
    else:
        spec = {"builtin": builtin}
    settings = _json_option(training, "--training")
    shortcuts = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate}
    settings |= {k: v for k, v in shortcuts.items() if v is not None}
    job = call(
        ctx,
        "train",
        model_name,
        family,
        spec,
        params=_json_option(params, "--params"),
        training=settings,
    )
    click.echo(f"job {job['id']} {job['state']}")
    if wait_:
        _wait_and_report(ctx, job, None)


def _parse_input(text: str, number: int) -> Any:
    """A feature row ('[5.1, 3.5]', JSON) or a text; a row holding NaN or Infinity is
    refused here, naming the input, since no model can take it."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return _loads(stripped)
        except NotFinite as exc:
            raise click.ClickException(
                f"input {number}, {text}: {exc} is not a number; a feature must be finite"
            ) from None
        except ValueError:
            pass
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_row_hint(inputs: tuple[str, ...]) -> str:
    """When every input is a bare number, the shell most likely split one row."""
    if not all(_is_number(x) for x in inputs):
        return ""
    row = ", ".join(inputs)
    return f"\nEach INPUT is one row: quote a row of features as one argument, e.g. '[{row}]'"


def _out_path(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() not in OUTPUT_TYPES:
        raise click.BadParameter(
            "the predictions are saved as .parquet or .csv", param_hint="--out"
        )
    return path


def save_output(ctx: click.Context, job_id: str, out: Path) -> None:
    """Download a batch prediction's output with a bar, and say where it went."""
    bar = TransferBar()
    try:
        call(ctx, "download_output", job_id, out, progress=bar)
    except OSError as exc:
        raise click.ClickException(f"cannot save the predictions to {out}: {exc}") from None
    finally:
        bar.close()
    click.echo(f"predictions saved to {out} ({out.stat().st_size / MB:,.1f} MB)")


def _predict_dataset(ctx: click.Context, model_name: str, version: str, out: Path,
                     **dataset: Any) -> None:  # fmt: skip
    # The model's version may be an alias too: the API says if it is not one.
    model_version = int(version) if version.isdigit() else version
    job = call(ctx, "predict_dataset", model_name, version=model_version, **dataset)
    click.echo(f"job {job['id']} {job['state']}")
    try:
        job = _wait_and_report(ctx, job, None)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"stopped waiting; job {job['id']} goes on: `torchqueue jobs output {job['id']} "
            f"--out {out}` saves its predictions once it has succeeded"
        ) from None
    save_output(ctx, job["id"], out)


@click.command()
@click.argument("model_name")
@click.argument("inputs", nargs=-1)
@click.option("--version", default="latest", show_default=True)
@click.option(
    "--wait",
    "wait_",
    type=float,
    default=60,
    show_default=True,
    help="seconds to wait for the answer",
)
@click.option("--json", "as_json", is_flag=True, help="print the whole answer as JSON")
@click.option("--dataset", help="instead of INPUTS: every row of an uploaded data set")
@click.option("--dataset-version", default="latest", show_default=True)
@click.option("--features", help="with --dataset: the input columns, a,b,c (default: the model's)")
@click.option("--text", "text_column", help="with --dataset: the column of texts")
@click.option("--id", "id_column", help="with --dataset: a column copied beside each prediction")
@click.option("--out", help="with --dataset: where to save the predictions, .parquet or .csv")
@click.pass_context
def predict(
    ctx: click.Context,
    model_name: str,
    inputs: tuple[str, ...],
    version: str,
    wait_: float,
    as_json: bool,
    dataset: str | None,
    dataset_version: str,
    features: str | None,
    text_column: str | None,
    id_column: str | None,
    out: str | None,
) -> None:
    """Predict with a model. INPUTS are texts, or feature rows as JSON lists: '[1, 2.5]'.
    Or --dataset NAME --out preds.parquet: every row of an uploaded data set, in a job
    whose progress is shown, its predictions downloaded when it is done."""
    if bool(inputs) == bool(dataset):
        raise click.UsageError("give INPUTS, or --dataset NAME with --out FILE")
    if dataset:
        if not out:
            raise click.UsageError("--dataset needs --out FILE (.parquet or .csv)")
        _predict_dataset(
            ctx, model_name, version, _out_path(out), dataset=dataset,
            dataset_version=parse_version(dataset_version, "--dataset-version"),
            features=_names(features), text=text_column, id_column=id_column,
        )  # fmt: skip
        return
    given = {"--out": out, "--features": features, "--text": text_column, "--id": id_column}
    stray = [k for k, v in given.items() if v]
    if stray:
        raise click.UsageError(f"{stray[0]} goes with --dataset")
    rows = [_parse_input(x, i) for i, x in enumerate(inputs, 1)]
    with open_client(ctx) as client:
        try:
            answer = client.predict_now(
                model_name,
                rows,
                version=int(version) if version.isdigit() else version,
                timeout=wait_,
            )
        except ApiError as exc:
            hint = _split_row_hint(inputs) if (exc.field or "").startswith("inputs") else ""
            raise click.ClickException(message_of(exc) + hint) from None
    if "outputs" not in answer:  # not done within the wait: its job
        answer = call(ctx, "wait", answer["id"])
        _summary(answer)
        answer = {"job_id": answer["id"], **answer["result"]}
    if as_json:
        echo_json(answer)
        return
    for text, out_ in zip(inputs, answer["outputs"], strict=True):
        click.echo(f"{text}\t{json.dumps(out_, ensure_ascii=False)}")


@click.group()
def jobs() -> None:
    """List, show and wait for jobs."""


@jobs.command("list")
@click.option("--state")
@click.option("--kind", type=click.Choice(["train", "predict"]))
@click.option("--model", "model_name")
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0)
@click.pass_context
def jobs_list(
    ctx: click.Context,
    state: str | None,
    kind: str | None,
    model_name: str | None,
    limit: int,
    offset: int,
) -> None:
    page = call(
        ctx, "jobs", state=state, kind=kind, model_name=model_name, limit=limit, offset=offset
    )
    click.echo(f"{'ID':36}  {'KIND':7}  {'STATE':10}  {'MODEL':24}  CREATED")
    for j in page["items"]:
        click.echo(
            f"{j['id']:36}  {j['kind']:7}  {j['state']:10}  "
            f"{j['model_name'][:24]:24}  {j['created_at'][:19]}"
        )
    click.echo(f"{len(page['items'])} of {page['total']}")


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="the job as JSON, without its history")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """A job, and its history."""
    job = call(ctx, "job", job_id)
    if as_json:
        echo_json(job)
        return
    for key in (
        "id",
        "kind",
        "state",
        "model_name",
        "model_version",
        "attempts",
        "worker",
        "message",
        "created_at",
        "started_at",
        "finished_at",
    ):
        click.echo(f"{key + ':':15}{job.get(key)}")
    if job.get("error"):
        click.echo(f"{'error:':15}{job_error(job)}")
    if (job.get("result") or {}).get("metrics"):
        click.echo(f"{'metrics:':15}{json.dumps(job['result']['metrics'])}")
    click.echo("history:")
    for event in call(ctx, "events", job_id):
        worker = f" [{event['worker']}]" if event.get("worker") else ""
        click.echo(f"  {event['at'][:19]}  {event['kind']:16} {event['message']}{worker}")


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: at once when queued; within a batch when running."""
    job = call(ctx, "cancel", job_id)
    click.echo(f"job {job['id']} {job['state']}")


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, help="give up after this many seconds")
@click.pass_context
def jobs_wait(ctx: click.Context, job_id: str, timeout: float | None) -> None:
    """Wait for a job, with a live progress bar."""
    job = _wait_and_report(ctx, call(ctx, "job", job_id), timeout)
    click.echo(f"job {job['id']} {job['state']}")


@jobs.command("output")
@click.argument("job_id")
@click.option("--out", required=True, help="where to save the predictions, .parquet or .csv")
@click.pass_context
def jobs_output(ctx: click.Context, job_id: str, out: str) -> None:
    """Save a batch prediction's output (predict --dataset), once it has succeeded."""
    save_output(ctx, job_id, _out_path(out))


@click.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    page = call(ctx, "models", limit=500)
    click.echo(f"{'NAME':32}  LATEST  UPDATED")
    for m in page["items"]:
        click.echo(f"{m['name'][:32]:32}  {m['latest_version']!s:6}  {m['updated_at'][:19]}")


@models.command("show")
@click.argument("name")
@click.option("--version", help="one version (a number, latest or an alias)")
@click.pass_context
def models_show(ctx: click.Context, name: str, version: str | None) -> None:
    if version:
        echo_json(call(ctx, "model_version", name, version))
    else:
        echo_json(call(ctx, "model", name))


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", required=False)
@click.option("--delete", is_flag=True, help="remove the alias instead")
@click.pass_context
def models_alias(
    ctx: click.Context, name: str, alias: str, version: str | None, delete: bool
) -> None:
    """Point ALIAS (production, staging, …) of model NAME at VERSION (a number, or latest
    or another alias, resolved now), or remove it with --delete. Predictions may name the
    alias wherever they name a version."""
    if delete == (version is not None):
        raise click.UsageError("give VERSION, or --delete")
    if version is None:
        call(ctx, "delete_alias", name, alias)
        click.echo(f"{name}: alias {alias} removed")
        return
    out = call(ctx, "set_alias", name, alias, int(version) if version.isdigit() else version)
    click.echo(f"{name}: alias {alias} → version {out['version']}")


@click.command("workers")
@click.pass_context
def workers_list(ctx: click.Context) -> None:
    """The workers: state, pool, devices, current job."""
    rows = call(ctx, "workers")
    click.echo(f"{'NAME':32}  {'STATE':8}  {'POOL':10}  {'DEVICES':24}  {'LAST SEEN':19}  JOB")
    for w in rows:
        devices = ",".join(str(d["index"]) for d in w["devices"]) or "cpu"
        click.echo(
            f"{w['name'][:32]:32}  {w['state']:8}  {w['pool'][:10]:10}  {devices[:24]:24}  "
            f"{w['last_seen_at'][:19]:19}  {w['current_job'] or '-'}"
        )


CLIENT_COMMANDS = [train, predict, jobs, models, workers_list]
