"""The ``torchqueue`` command: run the system (up, api, worker, flower, db) and use it
(train, predict, jobs, models, datasets) through ``api.client``. Heavy imports stay inside
commands, so that the client commands and the API never load torch. A user's mistake (a setting
that cannot be used, an API that cannot be reached or refuses) is one or two lines and a
non-zero exit, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import httpx

from api.client import ApiError
from ops.client_commands import CLIENT_COMMANDS
from ops.dataset_commands import datasets
from ops.family_commands import families
from ops.sweep_commands import sweep
from shared.config import SettingsError, get_settings
from shared.routing import DEFAULT_POOL, POOL_PATTERN

# The home's default until per-user homes: a directory in the current one.
OLD_HOME = Path(".torchqueue")
# A home in use holds one of these.
HOME_STATE = ("torchqueue.db", "admin.key", "artifacts")


@click.group()
@click.option(
    "--api-url",
    help="default: TORCHQUEUE_API_URL, else the URL a running `torchqueue up` recorded, "
    "else http://127.0.0.1:8000",
)
@click.option(
    "--api-key",
    help="default: TORCHQUEUE_API_KEY, else the local admin key that `torchqueue up` made",
)
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """torchqueue: PyTorch training and prediction jobs on GPU workers."""
    ctx.ensure_object(dict)
    ctx.obj["api_url"] = api_url
    ctx.obj["api_key"] = api_key
    get_settings()  # a setting that cannot be used is said here, before anything starts
    _notice_old_home()


def _notice_old_home() -> None:
    """Say once, per directory, that a ``./.torchqueue`` left by an earlier release is not
    the home any more (unless TORCHQUEUE_HOME names it), and how to keep using it."""
    if "TORCHQUEUE_HOME" in os.environ or not any((OLD_HOME / f).exists() for f in HOME_STATE):
        return
    old, home = OLD_HOME.resolve(), get_settings().home_dir
    told = home / "old-homes-noticed"
    if old == home or (told.is_file() and str(old) in told.read_text().splitlines()):
        return
    click.echo(
        f"note: {old} is no longer the default home; it is now {home}. To keep using the "
        f"old one: export TORCHQUEUE_HOME={old} (said once)",
        err=True,
    )
    home.mkdir(parents=True, exist_ok=True)
    with told.open("a") as f:
        f.write(f"{old}\n")


# --- running the system ----------------------------------------------------------------


@cli.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    help="state directory; default TORCHQUEUE_HOME, else the per-user data directory",
)
@click.option("--port", default=8000, show_default=True, envvar="TORCHQUEUE_API_PORT")
@click.option("--flower-port", default=5555, show_default=True, envvar="TORCHQUEUE_FLOWER_PORT")
@click.option("--verbose", is_flag=True, help="show the processes' logs here too")
def up(home: Path | None, port: int, flower_port: int, verbose: bool) -> None:
    """Start everything on this machine, in the foreground; Ctrl-C stops it."""
    from ops.supervisor import Supervisor

    home = home.expanduser().resolve() if home else get_settings().home_dir
    sys.exit(Supervisor(home=home, port=port, flower_port=flower_port, verbose=verbose).run())


@cli.command()
@click.option("--host", default=None, help="default TORCHQUEUE_API_HOST or 127.0.0.1")
@click.option("--port", type=int, default=None, help="default TORCHQUEUE_API_PORT or 8000")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="API processes on the one port, each batching its own callers "
    "(default TORCHQUEUE_API_WORKERS or 1)",
)
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from shared import logs

    settings = get_settings()
    logs.configure("api")
    workers = workers or settings.api_workers
    uvicorn.run(
        # Several processes: each configures its own logging as it builds its app.
        "api.app:create_logged_app" if workers > 1 else "api.app:create_app",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level="info",
        log_config=None,  # uvicorn's loggers go through ``shared.logs``
        access_log=settings.api_access_log,
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

    from shared import processes
    from workers.main import start

    if bool(gpus) == cpu:
        raise click.UsageError("give exactly one of --gpus or --cpu")
    if not re.match(POOL_PATTERN, pool):
        raise click.BadParameter("lower-case letters, digits and '-'", param_hint="--pool")
    try:
        status = start(gpus, queues, pool, loglevel)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    processes.exit_now(status)


@cli.command()
@click.option("--port", default=None, type=int, help="default TORCHQUEUE_FLOWER_PORT or 5555")
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int | None, address: str) -> None:
    """Serve Flower for the same broker."""
    from shared import logs
    from shared.celery_app import get_celery

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
    _login_everywhere()
    logs.configure("flower")  # before tornado's, which then adds no handler of its own
    argv = ["flower", f"--address={address}", f"--port={port}"]
    sys.exit(get_celery().start(argv) or 0)


def _login_everywhere() -> None:
    """Flower serves ``/metrics`` and ``/healthcheck`` to anyone, its login or not: ours
    asks for it there too (its metrics name the workers, tasks and queues)."""
    import tornado.web
    from flower.views import monitor

    for handler in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(handler.get, "login_required", False):
            handler.get = tornado.web.authenticated(handler.get)
            handler.get.login_required = True


@cli.command()
def reaper() -> None:
    """Take back jobs whose workers died; re-send jobs the broker lost."""
    import signal
    import threading

    from ops.reaper import Reaper
    from shared import logs

    logs.configure("reaper")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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
    """Revoke a key: it stops working within TORCHQUEUE_AUTH_CACHE_SECONDS (5 s)."""
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
    from shared.db.migrate import upgrade

    upgrade()
    url = get_settings().db_url
    click.echo(f"database at the latest schema: {url.split('@')[-1]}")


for command in [*CLIENT_COMMANDS, datasets, families, sweep]:
    cli.add_command(command)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        cli(prog_name="torchqueue")
    except SettingsError as exc:
        _fail(f"{exc}\n(settings come from TORCHQUEUE_* environment variables)")
    except ApiError as exc:
        _fail(exc.detail)
    except httpx.HTTPError as exc:
        _fail(f"{type(exc).__name__}: {exc}")


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
