"""`make up` on a machine with nothing configured: embedded Redis, SQLite, local artifacts.
A user's whole first session, driven as a subprocess, ended with Ctrl-C; and the
supervisor killed, or its terminal closed, with nothing of it left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared import processes
from shared.processes import free_port
from tests.helpers import ROOT, alive

pytestmark = pytest.mark.slow
ROLES = ("redis", "api", "worker:train-cpu", "worker:predict-cpu", "worker:webhooks", "reaper",
         "flower")  # fmt: skip


def _processes_with_home(home: Path) -> list[int]:
    """Every live process started for ``home`` (redis-server overwrites its environment
    with its title: the banner gives its pid)."""
    marker = f"TORCHQUEUE_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _banner_pids(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"process +(\S+) +pid (\d+)", text)}


def _environment(home: Path, port: int, flower_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHQUEUE_")}
    return env | {
        "TORCHQUEUE_HOME": str(home),
        "TORCHQUEUE_API_PORT": str(port),
        "TORCHQUEUE_FLOWER_PORT": str(flower_port),
        "PYTHONPATH": str(ROOT),
    }


def _wait_ready(up: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 180
    while "Ctrl-C stops everything" not in log.read_text():
        assert up.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return log.read_text()


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_make_up_serves_training_and_prediction_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port, flower_port = free_port(), free_port()
    env = _environment(home, port, flower_port)
    log = tmp_path / "up.log"
    # The venv this test runs in: its install step is what `make test` has just done.
    venv = Path(sys.prefix)
    make = ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/.installed", "up"]
    up = processes.spawn(make, log=log, env=env, cwd=ROOT)
    try:
        text = _wait_ready(up, log)
        # A short banner, last: URLs, the key file, every process by role with its pid.
        said = [line for line in text.splitlines() if not line.startswith("make")]
        assert len(said) <= 20, text
        assert said[-1].startswith("torchqueue | ready in ") and "Ctrl-C stops" in said[-1]
        assert f"http://127.0.0.1:{port}/docs" in text
        assert f"http://127.0.0.1:{flower_port}" in text
        assert "(embedded)" in text
        pids = _banner_pids(text)
        assert set(pids) == set(ROLES), text
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ready"
        # A local admin key and Flower's login, made on first start, readable by us only;
        # the banner names their files, never the secrets.
        key_file, flower_file = home / "admin.key", home / "flower.credentials"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert flower_file.stat().st_mode & 0o777 == 0o600
        assert str(key_file) in text and key_file.read_text().strip() not in text
        user, _, password = flower_file.read_text().strip().partition(":")
        assert str(flower_file) in text and password not in text
        flower = f"http://127.0.0.1:{flower_port}/workers"
        assert httpx.get(flower).status_code == 401
        assert httpx.get(flower, auth=(user, password)).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 401

        # From another directory, with neither the URL nor the key given: `up` recorded
        # its URL in the home, and the key file is there.
        client_env = {k: v for k, v in env.items() if k != "TORCHQUEUE_API_PORT"}
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        trained = _cli(
            client_env,
            elsewhere,
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
        predicted = _cli(client_env, elsewhere, "predict", "up-iris", "[5.1, 3.5, 1.4, 0.2]")
        assert predicted.returncode == 0, predicted.stderr
        assert '"label": "setosa"' in predicted.stdout
        assert (home / "torchqueue.db").exists()
        assert list((home / "artifacts" / "models" / "up-iris").glob("*/model.safetensors"))
        assert len(_processes_with_home(home)) >= 5  # make, up, api, workers, flower

        # One log file per process, each line marked with its role; a job's, with the job.
        job_id = trained.stdout.split()[1]
        assert " INFO api uvicorn" in (home / "logs" / "api.log").read_text()
        worker_log = (home / "logs" / "worker-train-cpu.log").read_text()
        assert f"worker:train-cpu job={job_id} workers.jobs" in worker_log
        assert " INFO reaper " in (home / "logs" / "reaper.log").read_text()
        assert (home / "logs" / "redis.log").read_text()
        assert "Celery" not in log.read_text() and "celery@" not in log.read_text()
    finally:
        processes.signal_group(up, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            processes.signal_group(up, signal.SIGKILL)
            raise
    text = log.read_text()
    stopped = re.search(r"torchqueue \| stopped in ([\d.]+) s", text)
    assert stopped, text
    assert float(stopped[1]) < 4, text  # an idle Ctrl-C: well under 5 s
    for child_log in (home / "logs").glob("*.log"):
        logged = child_log.read_text()
        assert " ERROR " not in logged and "Traceback" not in logged, child_log
        assert "exited with" not in logged, child_log  # a pool child lost (billiard)
    deadline = time.monotonic() + 10
    while _processes_with_home(home) or alive(pids["redis"]):
        assert time.monotonic() < deadline, f"left running: {_processes_with_home(home)}"
        time.sleep(0.2)
    assert not (home / "redis.url").exists() and not (home / "up.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_nothing_outlives_up_whatever_ends_it(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGKILL: nothing of `up` runs, the kernel's parent-death signal stops each child,
    and each stops its own (a Celery worker its pool). SIGHUP (a closed terminal): a clean
    stop, as Ctrl-C."""
    home = tmp_path / "home"
    port, flower_port = free_port(), free_port()
    log = tmp_path / "up.log"
    argv = [sys.executable, "-m", "ops.cli", "up"]
    up = processes.spawn(argv, log=log, env=_environment(home, port, flower_port), cwd=ROOT)
    try:
        pids = _banner_pids(_wait_ready(up, log))
        redis_port = int((home / "redis.url").read_text().rsplit(":", 1)[1].split("/")[0])
        started = set(_processes_with_home(home)) | set(pids.values())
        assert len(started) >= 8  # up, redis, api, 2 workers, a pool child, reaper, flower
        os.kill(up.pid, sig)
        up.wait(30)
        deadline = time.monotonic() + 5
        while left := [pid for pid in started if alive(pid)]:
            assert time.monotonic() < deadline, f"{sig.name}: left running: {left}"
            time.sleep(0.1)
    finally:
        processes.stop(up)
        for pid in _processes_with_home(home):
            os.kill(pid, signal.SIGKILL)
    for held in (port, flower_port, redis_port):
        assert processes.port_is_free(held), f"port {held} still held"
    if sig == signal.SIGHUP:
        assert up.returncode == 0
        assert "SIGHUP: stopping" in log.read_text() and "torchqueue | stopped" in log.read_text()
