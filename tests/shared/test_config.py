"""Where the state lives by default, and how a setting that cannot be used is said."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings, describe


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
