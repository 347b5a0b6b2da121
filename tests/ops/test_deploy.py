"""The deployment files: the compose file against the Compose specification, and the
choices in it that keep a fleet safe."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from tests.helpers import ROOT

COMPOSE = (ROOT / "docker-compose.yml").read_text()
SECRETS = {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "BOOTSTRAP_KEY", "FLOWER_PASSWORD"}
_VAR = re.compile(r"\$\{([A-Z_]+)(:?[-?])?([^}]*)\}")


def _interpolated(env: dict[str, str]) -> dict[str, Any]:
    """The file as `docker compose` sees it with ``env`` as its .env (x- blocks dropped)."""

    def value(m: re.Match[str]) -> str:
        name, op, default = m.groups()
        if name in env:
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} must be set: {default}")
        return default if op else ""

    data: dict[str, Any] = yaml.safe_load(_VAR.sub(value, COMPOSE))
    return {k: v for k, v in data.items() if not k.startswith("x-")}


def _env() -> dict[str, str]:
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, _ = line.partition("=")
            env[name] = "0123456789abcdef" * 2
    return env


def _validate(data: dict[str, Any]) -> None:
    PyCompose.from_json(json.dumps(data)).validate()


def test_the_compose_file_follows_the_specification() -> None:
    _validate(_interpolated(_env()))


def test_a_broken_compose_file_is_refused() -> None:
    data = _interpolated(_env())
    data["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] = "0"
    with pytest.raises(ValueError, match="expected a set"):
        _validate(data)


def test_secrets_have_no_defaults() -> None:
    for name, op, _ in _VAR.findall(COMPOSE):
        if name in SECRETS:
            assert op == ":?", f"{name} must be required (${{{name}:?...}}), not defaulted"
    env = _env()
    for secret in SECRETS:
        with pytest.raises(KeyError, match=secret):
            _interpolated({k: v for k, v in env.items() if k != secret})


def test_the_fleet_is_configured_safely() -> None:
    services = _interpolated(_env())["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis and "--maxmemory-policy noeviction" in redis
    assert "--appendonly yes" in redis
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} listens beyond loopback"
    gpu_workers = [s for n, s in services.items() if n.startswith("worker-gpu")]
    assert gpu_workers
    for worker in gpu_workers:
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["device_ids"]
    torch_free = ("api", "flower", "migrate", "reaper")
    assert all(services[n]["image"] == "torchqueue-api:latest" for n in torch_free)
    assert "TORCHQUEUE_FLOWER_PASSWORD" in services["flower"]["environment"]
    assert "TORCHQUEUE_BOOTSTRAP_KEY" in services["api"]["environment"]
    assert "TORCHQUEUE_BOOTSTRAP_KEY" not in services["worker-cpu"]["environment"]
    api_image = (ROOT / "ops/docker/Dockerfile.api").read_text()
    assert "[worker]" not in api_image and "torch is in the API image" in api_image


def test_the_systemd_unit_pins_one_gpu_per_instance() -> None:
    unit = (ROOT / "ops/systemd/torchqueue-worker@.service").read_text()
    assert re.search(r"^ExecStart=\S+ worker --gpus %i$", unit, re.M)
    assert re.search(r"^KillSignal=SIGTERM$", unit, re.M)
    assert re.search(r"^Restart=always$", unit, re.M)
