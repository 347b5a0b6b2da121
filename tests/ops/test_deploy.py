"""The deployment files: the compose file against the Compose specification, and the
choices in it that keep a fleet safe."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from shared.config import ENV_PREFIX, Settings, file_settings
from tests.helpers import ROOT, fresh_database, reset_caches

COMPOSE = (ROOT / "docker-compose.yml").read_text()
# Docker secrets, each a file the operator makes under ./secrets (the header says how).
SECRETS = {
    "redis_url",
    "database_url",
    "redis_conf",
    "redis_password",
    "postgres_password",
    "bootstrap_key",
    "flower_password",
}
# A variable whose name says it holds a secret (TORCHQUEUE_AUTH is on/off, not one).
SECRETISH = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|CREDENTIAL|REDISCLI_AUTH|(REDIS|DATABASE)_URL")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ROTATION = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
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


def _env_names() -> list[str]:
    """The variables .env.example sets or shows (commented out)."""
    names = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^#? ?([A-Z][A-Z0-9_]*)=", line)
        if m:
            names.append(m.group(1))
    return names


def _env() -> dict[str, str]:
    """The .env that `cp .env.example .env` makes."""
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            env[name] = value
    return env


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _interpolated(_env())["services"]
    return services


def _validate(data: dict[str, Any]) -> None:
    PyCompose.from_json(json.dumps(data)).validate()


def _python_script(test: list[str]) -> tuple[str, list[str]]:
    """A healthcheck's `python -c SCRIPT ARGS...`: the script and its arguments."""
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3], test[4:]


def test_the_compose_file_follows_the_specification() -> None:
    _validate(_interpolated(_env()))
    # With no .env at all, too: every variable has a default.
    _validate(_interpolated({}))


def test_a_broken_compose_file_is_refused() -> None:
    data = _interpolated(_env())
    data["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] = "0"
    with pytest.raises(ValueError, match="expected a set"):
        _validate(data)


def test_secrets_are_files_that_the_operator_makes() -> None:
    data = _interpolated(_env())
    assert set(data["secrets"]) == SECRETS
    for name, secret in data["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name}: a file, nothing else"
        assert secret["file"].startswith("./secrets/"), name
    # No secret is a variable of .env (or a default in this file).
    assert not [n for n in _env_names() if SECRETISH.search(n)]
    assert not [n for n, _, _ in _VAR.findall(COMPOSE) if SECRETISH.search(n)]
    # The header shows how to make every one of them.
    header = COMPOSE.split("\nname:", 1)[0]
    for secret in data["secrets"].values():
        assert secret["file"].removeprefix("./secrets/") in header
    assert "openssl rand -hex 32" in header and "install -d -m 700 secrets" in header


def test_no_environment_holds_a_secret() -> None:
    env = _env()
    values = set(env.values())
    fields = set(Settings.model_fields)
    from_files = set(file_settings(Settings.model_fields))
    for name, service in _services().items():
        mounted = set(service.get("secrets", []))
        assert mounted <= SECRETS, name
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for variable, value in environment.items():
            value = str(value)
            if variable.startswith(ENV_PREFIX):
                setting = variable.removeprefix(ENV_PREFIX).lower().removesuffix("_file")
                assert setting in fields, f"{name}: {variable} is no setting"
                if variable.endswith("_FILE"):
                    assert setting in from_files, f"{name}: {variable} is not read from a file"
            if SECRETISH.search(variable):
                assert variable.endswith("_FILE"), f"{name}: {variable} holds a secret"
                secret = value.removeprefix("/run/secrets/")
                assert secret in mounted, f"{name}: {variable}={value} is no secret it mounts"
            # No value of the .env lands in a secret-ish place, and no URL holds a password.
            assert not (SECRETISH.search(variable) and value in values), (name, variable)
            assert not re.search(r"://[^/@]*:[^/@]*@", value), f"{name}: {variable} has a password"
        # Every secret a service mounts, it uses: least privilege.
        used = {str(v).removeprefix("/run/secrets/") for v in environment.values()}
        scripts = json.dumps(service.get("command", [])) + json.dumps(service.get("healthcheck"))
        for secret in mounted:
            assert secret in used or f"/run/secrets/{secret}" in scripts, f"{name}: {secret}"


def test_every_service_is_checked_limited_and_rotates_its_logs() -> None:
    for name, service in _services().items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == "migrate":
            assert check == {"disable": True}  # a one-shot job
        else:
            assert "disable" not in check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert re.fullmatch(r"\d+[mg]b?", service["deploy"]["resources"]["limits"]["memory"]), (
            f"{name} has no memory limit"
        )
        assert "mem_limit" not in service, name
        assert service["logging"] == ROTATION, f"{name}: logs must rotate"


def test_the_api_is_healthy_when_ready() -> None:
    script, args = _python_script(_services()["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in script and not args
    compile(script, "<api healthcheck>", "exec")


def test_the_images_get_the_right_torch() -> None:
    services = _services()
    gpu = services["worker-gpu"]
    for name in ("worker-cpu", "predict-cpu"):
        build = services[name]["build"]
        assert build["args"]["TORCH_INDEX_URL"] == CPU_INDEX, name
        assert build["dockerfile"] == "ops/docker/Dockerfile.worker"
        assert services[name]["image"] == "torchqueue-worker-cpu:latest"
        assert services[name]["image"] != gpu["image"]
    assert (
        "/whl/cu" in _interpolated({})["services"]["worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"]
    )
    torch_free = ("api", "flower", "migrate", "reaper")
    assert all(services[n]["image"] == "torchqueue-api:latest" for n in torch_free)
    api_image = (ROOT / "ops/docker/Dockerfile.api").read_text()
    assert "[worker]" not in api_image and "torch is in the API image" in api_image


def test_one_gpu_worker_per_gpu() -> None:
    gpu = _services()["worker-gpu"]
    assert gpu["command"] == ["torchqueue", "worker", "--gpus", "all"]
    assert gpu["profiles"] == ["gpu"] and "replicas" not in gpu["deploy"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "device_ids" not in device
    assert device["count"] == "all"
    assert (
        _interpolated({"GPU_COUNT": "2"})["services"]["worker-gpu"]["deploy"]["resources"][
            "reservations"
        ]["devices"][0]["count"]
        == 2
    )
    assert [n for n in _services() if n.startswith("worker-gpu")] == ["worker-gpu"]


def test_the_fleet_is_configured_safely() -> None:
    services = _services()
    redis = " ".join(services["redis"]["command"])
    assert "--include /run/secrets/redis_conf" in redis
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis
    assert "requirepass" not in redis and "pass" not in redis.replace("/run/secrets/", "")
    assert "environment" not in services["redis"]
    check = " ".join(services["redis"]["healthcheck"]["test"])
    assert 'REDISCLI_AUTH="$$(cat /run/secrets/redis_password)"' in check
    assert "-a " not in check and "-u " not in check
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in postgres
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} listens beyond loopback"
    assert "TORCHQUEUE_FLOWER_PASSWORD_FILE" in services["flower"]["environment"]
    assert "TORCHQUEUE_BOOTSTRAP_KEY_FILE" in services["api"]["environment"]
    for name in ("worker-cpu", "predict-cpu", "worker-gpu", "reaper", "flower", "migrate"):
        assert "bootstrap_key" not in services[name]["secrets"], name
    assert services["migrate"]["secrets"] == ["database_url"]
    assert "database_url" not in services["flower"]["secrets"]


# --- the healthchecks' scripts ----------------------------------------------------------------


def _kinds(command: list[str]) -> tuple[str, ...]:
    queues = command[command.index("--queues") + 1] if "--queues" in command else "train,predict"
    return tuple(queues.split(","))


def _ping(
    script: str, args: list[str], answering: set[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], bool]:
    """Run a worker's healthcheck script against a broker where ``answering`` answer:
    the nodes it asked, and whether it said healthy."""
    asked: list[str] = []

    def ping(destination: list[str], timeout: float) -> list[dict[str, Any]]:
        asked.extend(destination)
        return [{n: {"ok": "pong"}} for n in destination if n in answering]

    app = SimpleNamespace(control=SimpleNamespace(ping=ping))
    monkeypatch.setattr("shared.celery_app.get_celery", lambda: app)
    monkeypatch.setattr(sys, "argv", ["-c", *args])
    with pytest.raises(SystemExit) as done:
        exec(compile(script, "<worker healthcheck>", "exec"), {})
    return asked, not done.value.code


def test_each_worker_is_healthy_when_its_nodes_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.devices import DeviceGroup
    from workers.main import node_name

    monkeypatch.setattr(socket, "gethostname", lambda: "box")
    monkeypatch.setenv("TORCHQUEUE_FAKE_GPUS", "2")
    services = _services()
    for name, group in (
        ("worker-cpu", [DeviceGroup()]),
        ("predict-cpu", [DeviceGroup()]),
        ("worker-gpu", [DeviceGroup((0,)), DeviceGroup((1,))]),
    ):
        script, args = _python_script(services[name]["healthcheck"]["test"])
        kinds = _kinds(services[name]["command"])
        nodes = [node_name(g, kinds) for g in group]
        assert _ping(script, args, set(nodes), monkeypatch) == (nodes, True), name
        assert _ping(script, args, set(nodes[1:]), monkeypatch) == (nodes, False), name
        assert _ping(script, args, set(), monkeypatch) == (nodes, False), name
    monkeypatch.setenv("TORCHQUEUE_FAKE_GPUS", "0")
    script, args = _python_script(services["worker-gpu"]["healthcheck"]["test"])
    assert _ping(script, args, set(), monkeypatch) == ([], False)  # no GPU: unhealthy


def test_the_worker_healthcheck_pings_a_running_worker(worker: Path) -> None:
    script, args = _python_script(_services()["worker-cpu"]["healthcheck"]["test"])
    run = subprocess.run(
        [sys.executable, "-c", script, *args], env=os.environ, timeout=60, capture_output=True
    )
    assert run.returncode == 0, run.stderr.decode()
    run = subprocess.run([sys.executable, "-c", script, "cpu-predict"], env=os.environ, timeout=60)
    assert run.returncode == 1


def test_the_reaper_is_healthy_while_one_reaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops.reaper import LOCK
    from shared.db import locks
    from shared.db.session import session_scope

    script, args = _python_script(_services()["reaper"]["healthcheck"]["test"])
    url, remove = fresh_database(tmp_path)
    monkeypatch.setenv("TORCHQUEUE_DATABASE_URL", url)
    reset_caches()

    def healthy() -> bool:
        with pytest.raises(SystemExit) as done:
            exec(compile(script, "<reaper healthcheck>", "exec"), {})
        return not done.value.code

    try:
        assert not args and not healthy()  # no reaper yet
        with session_scope() as s:
            assert locks.acquire_lock(s, LOCK, "reaper@box:1", 15)
        assert healthy()
        with session_scope() as s:
            assert locks.acquire_lock(s, LOCK, "reaper@box:1", -1)  # its lock expired
        assert not healthy()
    finally:
        monkeypatch.undo()
        reset_caches()
        remove()


def test_the_other_healthchecks_compile() -> None:
    for name, service in _services().items():
        test = service["healthcheck"].get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"<{name} healthcheck>", "exec")


# --- systemd ----------------------------------------------------------------------------------


def _unit() -> str:
    return (ROOT / "ops/systemd/torchqueue-worker@.service").read_text()


def test_the_systemd_unit_pins_one_gpu_per_instance() -> None:
    unit = _unit()
    assert re.search(r"^ExecStart=\S+ worker --gpus %i$", unit, re.M)
    assert re.search(r"^KillSignal=SIGTERM$", unit, re.M)
    assert re.search(r"^Restart=always$", unit, re.M)


def test_the_systemd_unit_writes_only_where_it_must() -> None:
    unit = _unit()
    assert re.search(r"^ProtectSystem=strict$", unit, re.M)
    writable = re.findall(r"^ReadWritePaths=(.+)$", unit, re.M)
    assert "/var/lib/torchqueue" in writable  # the home: dataset cache, torch's caches
    assert "-/srv/torchqueue/artifacts" in writable  # a directory artifact store, if any


def test_the_systemd_unit_takes_its_secrets_as_credentials() -> None:
    unit = _unit()
    credentials = dict(re.findall(r"^LoadCredential=([^:\n]+):(\S+)$", unit, re.M))
    assert {"redis_url", "database_url"} <= set(credentials)
    for name in credentials:
        assert re.search(rf"^Environment=TORCHQUEUE_{name.upper()}_FILE=%d/{name}$", unit, re.M)
    for line in re.findall(r"^Environment=(.+)$", unit, re.M):
        variable = line.split("=", 1)[0]
        assert not SECRETISH.search(variable) or variable.endswith("_FILE"), line


def test_every_variable_of_the_compose_file_is_shown_in_env_example() -> None:
    assert {name for name, _, _ in _VAR.findall(COMPOSE)} <= set(_env_names())
