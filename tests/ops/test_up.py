"""`make up` on a machine with nothing configured: embedded Redis, SQLite, local artifacts.
A user's whole first session, driven as a subprocess, ended with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared import processes
from shared.processes import free_port
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def _processes_with_home(home: Path) -> list[int]:
    marker = f"TORCHQUEUE_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_make_up_serves_training_and_prediction_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHQUEUE_")}
    env |= {
        "TORCHQUEUE_HOME": str(home),
        "TORCHQUEUE_API_PORT": str(port),
        "TORCHQUEUE_FLOWER_PORT": str(flower_port),
    }
    log = tmp_path / "up.log"
    up = processes.spawn(["make", "--no-print-directory", "up"], log=log, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while "ready; Ctrl-C stops everything" not in log.read_text():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert f"http://127.0.0.1:{port}/docs" in text
        assert "(embedded" in text
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ready"
        # A local admin key and Flower's login, made on first start, readable by us only.
        key_file, flower_file = home / "admin.key", home / "flower.credentials"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert flower_file.stat().st_mode & 0o777 == 0o600
        assert key_file.read_text().strip() in text  # printed once
        user, _, password = flower_file.read_text().strip().partition(":")
        flower = f"http://127.0.0.1:{flower_port}/workers"
        assert httpx.get(flower).status_code == 401
        assert httpx.get(flower, auth=(user, password)).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 401

        client_env = env | {"TORCHQUEUE_API_URL": f"http://127.0.0.1:{port}"}
        trained = _cli(
            client_env,
            "train",
            "up-iris",
            "--family",
            "mlp",
            "--builtin",
            "iris",
            "--epochs",
            "40",
            "--lr",
            "0.01",
            "--wait",
        )
        assert trained.returncode == 0, trained.stderr
        assert "up-iris version 1" in trained.stdout
        predicted = _cli(client_env, "predict", "up-iris", "[5.1, 3.5, 1.4, 0.2]")
        assert predicted.returncode == 0, predicted.stderr
        assert '"label": "setosa"' in predicted.stdout
        assert (home / "torchqueue.db").exists()
        assert list((home / "artifacts" / "models" / "up-iris").glob("*/model.safetensors"))
        assert len(_processes_with_home(home)) >= 5  # make, up, redis, api, workers, flower
    finally:
        processes.signal_group(up, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            processes.signal_group(up, signal.SIGKILL)
            raise
    text = log.read_text()
    assert "torchqueue | stopped" in text, text
    deadline = time.monotonic() + 10
    while _processes_with_home(home):
        assert time.monotonic() < deadline, f"left running: {_processes_with_home(home)}"
        time.sleep(0.2)
    assert not (home / "redis.url").exists()
