"""Where the state lives by default, and how a setting that cannot be used is said."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings, SettingsError, describe, file_settings


def test_the_default_home_is_per_user_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHQUEUE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert Settings().home_dir == tmp_path / ".local" / "share" / "torchqueue"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings().home_dir == tmp_path / "data" / "torchqueue"
    monkeypatch.setenv("TORCHQUEUE_HOME", "relative/home")
    assert Settings().home_dir == Path.cwd() / "relative" / "home"


def test_a_bad_setting_is_named_by_its_variable_without_its_value() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(bootstrap_key="change-me-please", log_format="xml")
    said = describe(refused.value)
    assert said.splitlines()[0].startswith("TORCHQUEUE_BOOTSTRAP_KEY: use a random secret")
    assert said.splitlines()[1].startswith("TORCHQUEUE_LOG_FORMAT: ")
    assert "change-me-please" not in said


SECRET_SETTINGS = {
    "redis_url",
    "database_url",
    "bootstrap_key",
    "api_key",
    "flower_password",
    "s3_access_key_id",
    "s3_secret_access_key",
}


def test_every_secret_can_come_from_a_file() -> None:
    assert set(file_settings(Settings.model_fields)) == SECRET_SETTINGS


@pytest.mark.parametrize("name", sorted(SECRET_SETTINGS))
def test_a_secret_is_read_from_its_file_less_one_newline(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"TORCHQUEUE_{name.upper()}"
    secret = tmp_path / name
    value = f"{name}-0123456789abcdef"
    secret.write_text(f"{value}\n")
    monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(f"{variable}_FILE", str(secret))
    got = getattr(Settings(), name)
    assert (got if isinstance(got, str) else got.get_secret_value()) == value
    # Only one newline goes (a file that ends with two keeps one); CRLF counts as one.
    secret.write_text(f"{value}\n\n")
    got = getattr(Settings(), name)
    assert (got if isinstance(got, str) else got.get_secret_value()) == f"{value}\n"
    secret.write_bytes(f"{value}\r\n".encode())
    got = getattr(Settings(), name)
    assert (got if isinstance(got, str) else got.get_secret_value()) == value


def test_the_url_and_the_keys_from_files_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "REDIS_URL": "redis://:pw-from-a-file@redis:6379/0",
        "DATABASE_URL": "postgresql+psycopg://torchqueue:pw@postgres/torchqueue",
        "BOOTSTRAP_KEY": "a-bootstrap-key-from-a-file",
    }.items():
        (tmp_path / name).write_text(value + "\n")
        monkeypatch.delenv(f"TORCHQUEUE_{name}", raising=False)
        monkeypatch.setenv(f"TORCHQUEUE_{name}_FILE", str(tmp_path / name))
    settings = Settings()
    assert settings.broker_url == "redis://:pw-from-a-file@redis:6379/0"
    assert settings.db_url == "postgresql+psycopg://torchqueue:pw@postgres/torchqueue"
    assert settings.bootstrap_key is not None
    assert "a-bootstrap-key" not in repr(settings.bootstrap_key)


def test_a_missing_or_unreadable_or_empty_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHQUEUE_REDIS_URL", raising=False)
    missing = tmp_path / "redis_url"
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL_FILE", str(missing))
    with pytest.raises(SettingsError, match=r"^TORCHQUEUE_REDIS_URL_FILE: cannot read .*redis_url"):
        Settings()
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL_FILE", str(tmp_path))  # a directory
    with pytest.raises(SettingsError, match=r"^TORCHQUEUE_REDIS_URL_FILE: cannot read "):
        Settings()
    missing.write_bytes(b"\xff\xfe")
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL_FILE", str(missing))
    with pytest.raises(SettingsError, match=r"^TORCHQUEUE_REDIS_URL_FILE: .* is not UTF-8 text"):
        Settings()
    missing.write_text("\n")
    with pytest.raises(SettingsError, match=r"^TORCHQUEUE_REDIS_URL_FILE: .* is empty"):
        Settings()


def test_a_file_that_only_root_reads_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    secret = tmp_path / "bootstrap_key"
    secret.write_text("a-bootstrap-key-from-a-file\n")
    secret.chmod(0)
    monkeypatch.delenv("TORCHQUEUE_BOOTSTRAP_KEY", raising=False)
    monkeypatch.setenv("TORCHQUEUE_BOOTSTRAP_KEY_FILE", str(secret))
    with pytest.raises(SettingsError, match=r"TORCHQUEUE_BOOTSTRAP_KEY_FILE: .*Permission denied"):
        Settings()


def test_a_secret_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "flower_password"
    secret.write_text("a-flower-password-from-a-file\n")
    monkeypatch.setenv("TORCHQUEUE_FLOWER_PASSWORD", "a-flower-password-from-env")
    monkeypatch.setenv("TORCHQUEUE_FLOWER_PASSWORD_FILE", str(secret))
    with pytest.raises(SettingsError) as refused:
        Settings()
    said = str(refused.value)
    assert "TORCHQUEUE_FLOWER_PASSWORD and TORCHQUEUE_FLOWER_PASSWORD_FILE" in said
    assert "from-env" not in said and "from-a-file" not in said


def test_a_weak_secret_from_a_file_is_named_by_its_file_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "bootstrap_key"
    secret.write_text("change-me-bootstrap-key\n")
    monkeypatch.delenv("TORCHQUEUE_BOOTSTRAP_KEY", raising=False)
    monkeypatch.setenv("TORCHQUEUE_BOOTSTRAP_KEY_FILE", str(secret))
    with pytest.raises(ValidationError) as refused:
        Settings()
    said = describe(refused.value)
    assert said.startswith("TORCHQUEUE_BOOTSTRAP_KEY_FILE: use a random secret")
    assert "change-me" not in said


def test_only_secrets_are_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "port").write_text("9999\n")
    monkeypatch.delenv("TORCHQUEUE_API_PORT", raising=False)
    monkeypatch.setenv("TORCHQUEUE_API_PORT_FILE", str(tmp_path / "port"))
    assert Settings().api_port == 8000
