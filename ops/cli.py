"""The ``torchqueue`` command: run the system (up, api, worker, flower, db) and use it
(train, predict, jobs, models) through ``api.client``. Heavy imports stay inside commands,
so that the client commands and the API never load torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ops.client_commands import CLIENT_COMMANDS
from shared.routing import DEFAULT_POOL, POOL_PATTERN


@click.group()
@click.option("--api-url", envvar="TORCHQUEUE_API_URL", help="default http://127.0.0.1:8000")
@click.option("--api-key", envvar="TORCHQUEUE_API_KEY", help="default: the local admin key")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """torchqueue: PyTorch training and prediction jobs on GPU workers."""
    ctx.ensure_object(dict)
    ctx.obj["api_url"] = api_url
    ctx.obj["api_key"] = api_key


# --- running the system ----------------------------------------------------------------


@cli.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    envvar="TORCHQUEUE_HOME",
    default=".torchqueue",
    show_default=True,
    help="state directory",
)
@click.option("--port", default=8000, show_default=True, envvar="TORCHQUEUE_API_PORT")
@click.option("--flower-port", default=5555, show_default=True, envvar="TORCHQUEUE_FLOWER_PORT")
def up(home: Path, port: int, flower_port: int) -> None:
    """Start everything on this machine, in the foreground; Ctrl-C stops it."""
    from ops.supervisor import Supervisor

    sys.exit(Supervisor(home=home.resolve(), port=port, flower_port=flower_port).run())


@cli.command()
@click.option("--host", default=None, help="default TORCHQUEUE_API_HOST or 127.0.0.1")
@click.option("--port", type=int, default=None, help="default TORCHQUEUE_API_PORT or 8000")
def api(host: str | None, port: int | None) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from shared.config import get_settings

    settings = get_settings()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
    )


@cli.command()
@click.option("--gpus", help="GPU indices for one worker (0 or 2,3), or all: one worker each")
@click.option("--cpu", is_flag=True, help="run on the CPU")
@click.option(
    "--queues",
    default="train,predict",
    show_default=True,
    help="the kinds of job to take: train, predict or both",
)
@click.option(
    "--pool",
    default=DEFAULT_POOL,
    show_default=True,
    help="the pool this worker serves (jobs name it in resources.pool)",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(gpus: str | None, cpu: bool, queues: str, pool: str, loglevel: str) -> None:
    """Run a Celery worker pinned to a GPU group or the CPU."""
    import re

    from workers.main import start

    if bool(gpus) == cpu:
        raise click.UsageError("give exactly one of --gpus or --cpu")
    if not re.match(POOL_PATTERN, pool):
        raise click.BadParameter("lower-case letters, digits and '-'", param_hint="--pool")
    try:
        status = start(gpus, queues, pool, loglevel)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(status)


@cli.command()
@click.option("--port", default=None, type=int, help="default TORCHQUEUE_FLOWER_PORT or 5555")
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int | None, address: str) -> None:
    """Serve Flower for the same broker."""
    from shared.celery_app import get_celery
    from shared.config import get_settings

    settings = get_settings()
    if not settings.flower_user or settings.flower_password is None:
        raise click.ClickException(
            "Flower shows task arguments and controls the workers: set "
            "TORCHQUEUE_FLOWER_USER and TORCHQUEUE_FLOWER_PASSWORD (16 characters or more)"
        )
    # Through the environment, not the command line, where `ps` would show it.
    os.environ["FLOWER_BASIC_AUTH"] = (
        f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
    )
    port = port or settings.flower_port
    argv = ["flower", f"--address={address}", f"--port={port}"]
    sys.exit(get_celery().start(argv) or 0)


@cli.command()
def reaper() -> None:
    """Take back jobs whose workers died; re-send jobs the broker lost."""
    import logging
    import signal
    import threading

    from ops.reaper import Reaper

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Reaper().run(stop)


@cli.group()
def keys() -> None:
    """API keys (straight in the database: run where TORCHQUEUE_DATABASE_URL reaches)."""


@keys.command("create")
@click.option("--name", required=True)
@click.option(
    "--scopes",
    required=True,
    help="comma-separated: jobs:submit,jobs:read,models:read,models:write,admin",
)
def keys_create(name: str, scopes: str) -> None:
    """Create a key; it is printed once and never stored."""
    from shared.db import keys as api_keys
    from shared.db.session import session_scope

    try:
        with session_scope() as s:
            made, key = api_keys.create_key(s, name, [x.strip() for x in scopes.split(",")])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scopes") from None
    click.echo(f"key {made.id} ({made.name}): {', '.join(made.scopes)}", err=True)
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    from shared.db import keys as api_keys
    from shared.db.session import session_scope

    with session_scope() as s:
        rows = api_keys.list_keys(s)
    click.echo(f"{'ID':12}  {'NAME':24}  {'STATE':8}  SCOPES")
    for k in rows:
        state = "revoked" if k.revoked_at else "active"
        click.echo(f"{k.id:12}  {k.name[:24]:24}  {state:8}  {','.join(k.scopes)}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: it stops working at once."""
    from shared.db import keys as api_keys
    from shared.db.session import session_scope
    from shared.errors import NotFound

    try:
        with session_scope() as s:
            api_keys.revoke_key(s, key_id)
    except NotFound as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"key {key_id} revoked")


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the latest schema."""
    from shared.config import get_settings
    from shared.db.migrate import upgrade

    upgrade()
    url = get_settings().db_url
    click.echo(f"database at the latest schema: {url.split('@')[-1]}")


for command in CLIENT_COMMANDS:
    cli.add_command(command)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="torchqueue")


if __name__ == "__main__":
    main()
