"""One settings object for every process, read from ``TORCHQUEUE_*`` environment variables.

Defaults run on one machine with nothing installed but Python: a SQLite file, a local
artifact directory and an embedded Redis, all under ``TORCHQUEUE_HOME``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TORCHQUEUE_", extra="ignore")

    home: Path = Field(default=Path(".torchqueue"), description="state directory")
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
    api_url: str = Field(default="http://127.0.0.1:8000", description="where clients call")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    # Authentication: "off" is for local experiments only (the API warns at every start).
    auth: Literal["on", "off"] = "on"
    # An admin key accepted from the environment, for compose files and scripts.
    bootstrap_key: SecretStr | None = None
    # What clients (the CLI, api.client) send; default: the local admin key file, if any.
    api_key: SecretStr | None = None
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    max_request_mb: float = 16.0
    max_model_params: int = 20_000_000
    max_wait_seconds: float = 300.0
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


@lru_cache
def get_settings() -> Settings:
    return Settings()
