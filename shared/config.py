"""One settings object for every process, read from ``TORCHQUEUE_*`` environment variables.

Defaults run on one machine with nothing installed but Python: a SQLite file, a local
artifact directory and an embedded Redis, all under ``TORCHQUEUE_HOME``, by default a
per-user directory that follows the platform's convention (``~/.local/share/torchqueue``
on Linux, through platformdirs), so that the command line works from any directory.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "TORCHQUEUE_"
DEFAULT_API_URL = "http://127.0.0.1:8000"


def default_home() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/torchqueue`` or
    ``~/.local/share/torchqueue`` on Linux, ``~/Library/Application Support/torchqueue``
    on macOS, ``%LOCALAPPDATA%\\torchqueue`` on Windows."""
    return platformdirs.user_data_path("torchqueue", appauthor=False)


# Secrets that are not SecretStr: the URLs hold passwords, and an S3 key id goes with its key.
FILE_TOO = frozenset({"redis_url", "database_url", "s3_access_key_id"})


def file_settings(fields: dict[str, FieldInfo]) -> list[str]:
    """The settings that ``TORCHQUEUE_<NAME>_FILE`` may give: every SecretStr, and FILE_TOO."""
    return [
        name
        for name, field in fields.items()
        if name in FILE_TOO
        or field.annotation is SecretStr
        or SecretStr in get_args(field.annotation)
    ]


def read_secret_file(variable: str, path: str) -> str:
    """A secret file's text less one trailing newline (what `echo` and editors add); a
    SettingsError naming ``variable`` when it cannot be read or is empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: {path} is not UTF-8 text") from None
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not text:
        raise SettingsError(f"{variable}: {path} is empty")
    return text


def _environ() -> dict[str, str]:
    # Variable names are case-insensitive, as pydantic-settings reads them.
    return {name.upper(): value for name, value in os.environ.items()}


class SecretFilesSource(PydanticBaseSettingsSource):
    """``TORCHQUEUE_<NAME>_FILE=/run/secrets/...``: a secret setting read from a file, the
    Docker-secrets (and systemd-credentials) way, so that the value is in no process's
    environment. Giving both ``TORCHQUEUE_<NAME>`` and its ``_FILE`` is an error."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads them all at once

    def __call__(self) -> dict[str, Any]:
        environ = _environ()
        values: dict[str, Any] = {}
        for name in file_settings(self.settings_cls.model_fields):
            variable = f"{ENV_PREFIX}{name}".upper()
            path = environ.get(f"{variable}_FILE")
            if path is None:
                continue
            if variable in environ:
                raise SettingsError(f"{variable} and {variable}_FILE are both set: set one of them")
            values[name] = read_secret_file(f"{variable}_FILE", path)
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    home: Path = Field(default_factory=default_home, description="state directory")
    redis_url: str | None = Field(
        default=None, description="broker; when unset, `torchqueue up` starts an embedded Redis"
    )
    database_url: str | None = Field(default=None, description="default: SQLite under home")
    artifacts_url: str | None = Field(default=None, description="default: home/artifacts")
    # For an s3:// artifacts_url; when unset, s3fs's own defaults (environment, instance role).
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str | None = None
    # Where clients call; unset: the URL that `torchqueue up` recorded in the home, else
    # DEFAULT_API_URL.
    api_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # API processes on the one port (`torchqueue api --workers`), each batching its own
    # callers; and whether each request is logged (the metrics count them either way).
    api_workers: int = Field(default=1, ge=1)
    api_access_log: bool = False
    flower_port: int = 5555
    # Authentication: "off" is for local experiments only (the API warns at every start).
    auth: Literal["on", "off"] = "on"
    # An admin key accepted from the environment, for compose files and scripts.
    bootstrap_key: SecretStr | None = None
    # Each API process keeps a valid key's lookup this long (0: never), so that most
    # requests skip the database: the bound on how long a key revoked or changed by
    # another process still works in this one.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=3600)
    # What clients (the CLI, api.client) send; default: the local admin key file, if any.
    api_key: SecretStr | None = None
    # An id that `torchqueue up` gives the processes it starts, which its API shows on
    # /healthz: how the supervisor knows that the API answering on its port is its own.
    instance: str | None = None
    # Log lines: `text`, or `json` (one object a line, for log shippers).
    log_format: Literal["text", "json"] = "text"
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    max_request_mb: float = 16.0
    # Data sets: an upload (`POST /v1/datasets`) over this size is refused with 413; it
    # counts toward no other body limit.
    max_dataset_mb: float = Field(default=10_240.0, gt=0)
    # Where a data set may be registered from by URL, read by the workers through fsspec:
    # prefixes such as `s3://team-data/` (comma-separated). None by default: URL sources
    # are off until the operator names where they may come from. `file://` and http(s) to
    # loopback, link-local and private addresses are refused unless a prefix names them
    # (`file:///srv/data/`, `http://10.0.0.5:9000/`).
    dataset_url_prefixes: str = ""
    # Each worker keeps the data sets it read in a local cache by sha256, at most this big
    # (least recently used first out).
    dataset_cache_mb: float = Field(default=20_480.0, gt=0)
    # A data set bigger than this in memory is streamed by row groups during training
    # instead of loaded whole; the same seed gives the same model either way.
    dataset_memory_mb: float = Field(default=4096.0, gt=0)
    # A batch prediction (a predict job over a data set) reads, scores and writes this
    # many rows at a time: each chunk's outputs are one object in the artifact store, the
    # point a job whose worker died resumes from, and the step its progress and
    # cancellation are checked at.
    predict_chunk_rows: int = Field(default=131_072, ge=1, le=10_000_000)
    max_model_params: int = 20_000_000
    # Which installed plugins' model families a worker loads (entry points of the group
    # `torchqueue.families`): `*` every one, a comma list of distribution names, or
    # `none`. torchqueue's own families always load.
    family_plugins: str = "*"
    max_wait_seconds: float = 300.0
    # Webhooks (`shared.webhook_urls`): http as well as https, and the hosts that may be
    # internal (loopback, private) addresses, comma-separated. A delivery that fails is
    # tried again after `webhook_retry_seconds`, doubling each time (at most an hour apart),
    # for `webhook_retry_for_hours`.
    webhook_allow_http: bool = False
    webhook_allowed_hosts: str = ""
    webhook_retry_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_for_hours: float = Field(default=24.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # A worker's Prometheus metrics (`workers.metrics`): served by its parent on this port
    # (`--gpus all`: this port plus each GPU's index) and address; none when unset.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_address: str = "127.0.0.1"
    # Threads torch may use in one worker process (0: let torch decide).
    torch_threads: int = 0
    # Models kept loaded per prediction worker process: at most this many, taking at most
    # this much memory for their weights.
    model_cache_size: int = 8
    model_cache_mb: float = 1024.0
    # Dynamic batching of sync predictions (`POST /v1/models/{name}/predict`), unless the
    # model sets its own: the API sends concurrent requests for one model version as one
    # message of at most `max_batch_size` rows, waiting at most `max_wait_ms` for more
    # while a batch of the same model is already on its way (an idle model's request goes
    # at once).
    max_batch_size: int = Field(default=256, ge=1, le=100_000)
    max_wait_ms: float = Field(default=10.0, ge=0, le=10_000)
    # How long the sync route waits for the outputs before answering 202 with the job.
    predict_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Served predictions are recorded in the database by a writer thread of the worker, in
    # one transaction per this many milliseconds (or rows), off the request's path; a
    # clean shutdown writes what is pending.
    result_flush_ms: float = Field(default=50.0, ge=0, le=60_000)
    result_flush_rows: int = Field(default=2000, ge=1)
    # Progress is written at most this often during training.
    progress_interval_seconds: float = 1.0
    # A running job's lease: renewed every `heartbeat_seconds` by its worker; a job whose
    # lease is older than `lease_seconds` is taken back by the reaper.
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 2.0
    reaper_interval_seconds: float = 5.0
    # Workers renew their row in the table of workers this often; one not seen for a while
    # is offline.
    worker_heartbeat_seconds: float = 5.0
    worker_offline_after_seconds: float = 20.0
    # A job still queued this long after it was sent, whose message the broker no longer
    # holds, is sent again.
    resend_after_seconds: float = 60.0

    @field_validator("bootstrap_key", "flower_password")
    @classmethod
    def _no_weak_secret(cls, value: SecretStr | None) -> SecretStr | None:
        secret = value.get_secret_value() if value is not None else ""
        if value is not None and (len(secret) < 16 or "change-me" in secret):
            raise ValueError("use a random secret of at least 16 characters, not a placeholder")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = SecretFilesSource(settings_cls)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    @property
    def url_prefixes(self) -> list[str]:
        return [p.strip() for p in self.dataset_url_prefixes.split(",") if p.strip()]

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_dir / 'torchqueue.db'}"

    @property
    def artifacts_location(self) -> str:
        return self.artifacts_url or str(self.home_dir / "artifacts")

    @property
    def admin_key_file(self) -> Path:
        """Where `torchqueue up` keeps the local admin key it created (mode 600)."""
        return self.home_dir / "admin.key"

    @property
    def up_file(self) -> Path:
        """Where a running `torchqueue up` records what it serves (its API's URL, the key
        file), for the command line and clients started anywhere else."""
        return self.home_dir / "up.json"

    def recorded_up(self) -> dict[str, Any]:
        """What the `torchqueue up` of this home recorded; empty when none runs."""
        try:
            recorded = json.loads(self.up_file.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    @property
    def client_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.admin_key_file.is_file():
            return self.admin_key_file.read_text().strip() or None
        return None

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        # Written by the local supervisor when it starts the embedded Redis.
        marker = self.home_dir / "redis.url"
        if marker.exists():
            return marker.read_text().strip()
        return "redis://127.0.0.1:6379/0"


class SettingsError(Exception):
    """A setting in the environment cannot be used; the message names its variable."""


def describe(error: ValidationError) -> str:
    """One line per setting at fault, named by its environment variable, never showing
    the value (it may be a secret)."""
    lines = []
    environ = _environ()
    for item in error.errors():
        name = f"{ENV_PREFIX}{item['loc'][0]}".upper() if item["loc"] else "settings"
        if f"{name}_FILE" in environ:  # the value came from that file
            name = f"{name}_FILE"
        lines.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
