"""``torchqueue datasets``: upload a file (with a bar of bytes, percentage and rate),
register a URL, list, show, delete. Built on ``api.client``, as the other client commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from api.client import ApiError, Json
from ops.client_commands import (
    MB,
    TransferBar,
    call,
    echo_json,
    message_of,
    open_client,
    parse_version,
)
from shared.formats import FORMATS

SHOWN_COLUMNS = 12
SHOWN_CLASSES = 5


@click.group()
def datasets() -> None:
    """Data sets: tables (CSV, Parquet, JSON Lines) and arrays (npy, npz) to train on
    and to predict over."""


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:,.1f} MB"


def _column(column: Json) -> str:
    shape = f"{column['shape']}" if column.get("shape") else ""
    return f"{column['name']} {column['type']}{shape}"


def _summary(version: Json, uploaded: int) -> None:
    columns = version.get("columns") or []
    click.echo(
        f"{version['name']} version {version['version']}: {version['rows']:,} rows, "
        f"{len(columns)} columns; {_size(uploaded)} uploaded, {_size(version['bytes'])} "
        f"stored as {version['format']}"
    )
    shown = ", ".join(_column(c) for c in columns[:SHOWN_COLUMNS])
    more = len(columns) - SHOWN_COLUMNS
    click.echo(f"columns: {shown}" + (f", and {more} more" if more > 0 else ""))
    click.echo(f"sha256: {version['sha256']}")


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--name", required=True, help="the data set's name: a new one, or a new version")
@click.option("--label", help="a column that must be there (the one you will train to predict)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="default: from the file's suffix",
)
@click.option("--json", "as_json", is_flag=True, help="print the new version as JSON")
@click.pass_context
def upload(
    ctx: click.Context, file: str, name: str, label: str | None, fmt: str | None, as_json: bool
) -> None:
    """Upload FILE as the next version of data set --name."""
    bar = TransferBar()
    with open_client(ctx) as client:
        try:
            version = client.upload_dataset(file, name, format=fmt, label=label, progress=bar)
        except ApiError as exc:
            bar.close()
            raise click.ClickException(message_of(exc)) from None
        except OSError as exc:
            bar.close()
            raise click.ClickException(f"cannot read {file}: {exc}") from None
    bar.close()
    if as_json:
        echo_json(version)
    else:
        _summary(version, Path(file).stat().st_size)


@datasets.command("add-url")
@click.argument("name")
@click.argument("url")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="default: from the URL")
@click.pass_context
def add_url(ctx: click.Context, name: str, url: str, fmt: str | None) -> None:
    """A version of data set NAME that the workers read from URL (s3://…, under a prefix
    the operator allows), instead of an upload."""
    version = call(ctx, "register_dataset_url", name, url, fmt)
    click.echo(
        f"{version['name']} version {version['version']}: read from {version['uri']} "
        f"({version['format']}); its sha256, rows and columns are recorded when a worker "
        "first reads it"
    )


@datasets.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0)
@click.pass_context
def datasets_list(ctx: click.Context, limit: int, offset: int) -> None:
    """Your data sets (an admin key: all)."""
    page = call(ctx, "list_datasets", limit=limit, offset=offset)
    click.echo(f"{'NAME':32}  {'LATEST':6}  {'CREATED BY':12}  UPDATED")
    for d in page["items"]:
        click.echo(
            f"{d['name'][:32]:32}  {d['latest_version']!s:6}  {d['created_by'] or '-':12}  "
            f"{d['updated_at'][:19]}"
        )
    click.echo(f"{len(page['items'])} of {page['total']}")


def _show_version(version: Json) -> None:
    source = version["source"]
    where = f"{source}, {version['format']}"
    if source == "url":
        where += f": {version['uri']}"
    unread = "unknown until a worker first reads it"
    rows = version.get("rows")
    fields: list[tuple[str, Any]] = [
        ("name", version["name"]),
        ("version", version["version"]),
        ("source", where),
        ("rows", f"{rows:,}" if rows is not None else unread),
        ("bytes", f"{version['bytes']:,}" if version.get("bytes") is not None else unread),
        ("sha256", version.get("sha256") or unread),
        ("created", f"{version['created_at'][:19]} by {version.get('created_by') or '-'}"),
    ]
    if version.get("upload_sha256") and version["upload_sha256"] != version.get("sha256"):
        fields.append(("uploaded", f"sha256 {version['upload_sha256']} (the file as sent)"))
    for key, value in fields:
        click.echo(f"{key + ':':10}{value}")
    columns = version.get("columns")
    if not columns:
        return
    counts = version.get("value_counts") or {}
    width = max(len(c["name"]) for c in columns)
    click.echo("columns:")
    for c in columns:
        line = f"  {c['name']:{width}}  {c['type']}{c.get('shape') or ''}"
        if c["name"] in counts:
            items = sorted(counts[c["name"]].items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{k}: {n:,}" for k, n in items[:SHOWN_CLASSES])
            more = f", … {len(items) - SHOWN_CLASSES} more" if len(items) > SHOWN_CLASSES else ""
            line += f"  ({shown}{more})"
        click.echo(line)


@datasets.command("show")
@click.argument("name")
@click.option("--version", help="a number or latest (default: the versions, and the latest)")
@click.option("--json", "as_json", is_flag=True, help="as JSON")
@click.pass_context
def show(ctx: click.Context, name: str, version: str | None, as_json: bool) -> None:
    """A data set version: columns and their types, rows, bytes, sha256, who made it when."""
    if version:
        one = call(ctx, "get_dataset_version", name, parse_version(version, "--version"))
        if as_json:
            echo_json(one)
        else:
            _show_version(one)
        return
    dataset = call(ctx, "get_dataset", name)
    if as_json:
        echo_json(dataset)
        return
    versions = sorted(dataset.get("versions") or [], key=lambda v: v["version"])
    click.echo(f"{'VERSION':7}  {'SOURCE':6}  {'FORMAT':7}  {'ROWS':>12}  {'BYTES':>12}  CREATED")
    for v in versions:
        rows = "-" if v.get("rows") is None else f"{v['rows']:,}"
        click.echo(
            f"{v['version']:<7}  {v['source']:6}  {v['format']:7}  {rows:>12}  "
            f"{_size(v.get('bytes')):>12}  {v['created_at'][:19]}"
        )
    if versions:
        click.echo()
        _show_version(versions[-1])


@datasets.command("delete")
@click.argument("name")
@click.argument("version", type=int)
@click.pass_context
def delete(ctx: click.Context, name: str, version: int) -> None:
    """Delete one version and its stored file; refused while a model version trained on it
    is registered (its lineage names it)."""
    call(ctx, "delete_dataset_version", name, version)
    click.echo(f"data set {name} version {version} deleted")
