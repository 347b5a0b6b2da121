"""What ``torchqueue up`` checks and says without starting the whole system: a busy port
refused before anything starts, a process that dies named with its last lines, children
that die with their parent whatever kills it, and the log files' rotation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import child_logs
from ops.supervisor import Child, StartFailed, Supervisor
from shared import processes
from shared.processes import free_port
from tests.helpers import ROOT, alive


def _up(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHQUEUE_")}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "up", "--home", str(home), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("which", ["--port", "--flower-port"])
def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"--port": str(free_port()), "--flower-port": str(free_port())} | {which: str(busy)}
        started = time.monotonic()
        result = _up(tmp_path / "home", *(x for kv in ports.items() for x in kv))
    assert result.returncode == 1
    assert time.monotonic() - started < 20  # nothing was started, nothing waited for
    said = result.stdout + result.stderr
    assert f"port {busy} (" in said and "is taken" in said
    assert f"torchqueue up {which} " in said  # how to choose another
    assert "ready" not in said and "Traceback" not in said
    assert not (tmp_path / "home").exists()  # no Redis, no database, no logs


def test_the_api_and_flower_cannot_share_a_port(tmp_path: Path) -> None:
    port = str(free_port())
    result = _up(tmp_path / "home", "--port", port, "--flower-port", port)
    assert result.returncode == 1
    assert "cannot both listen on port" in result.stdout


def test_a_process_that_dies_is_named_with_its_last_lines(tmp_path: Path) -> None:
    supervisor = Supervisor(home=tmp_path, port=free_port(), flower_port=free_port())
    log = tmp_path / "worker-train-cpu.log"
    log.write_text("an earlier run's line\n")
    script = "import sys; print('loading'); print('ValueError: no such queue'); sys.exit(3)"
    child = Child("worker:train-cpu", [sys.executable, "-c", script], log)
    child.offset = child_logs.size(log)
    child.proc = processes.spawn(child.argv, log=log, die_with_parent=True)
    supervisor.children.append(child)
    child.proc.wait(30)
    with pytest.raises(StartFailed) as failed:
        supervisor._check_children()
    message = str(failed.value)
    assert message.startswith(f"worker:train-cpu (pid {child.proc.pid}) exited with 3")
    assert "ValueError: no such queue" in message and str(log) in message
    assert "an earlier run's line" not in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal")
def test_a_child_dies_with_its_parent_even_of_sigkill() -> None:
    """A parent that starts ``sleep`` through ``spawn(die_with_parent=True)``, killed with
    SIGKILL: nothing of it can run a handler, and the kernel ends the child."""
    code = (
        "import sys, time; from shared import processes; "
        "child = processes.spawn(['sleep', '120'], die_with_parent=True); "
        "print(child.pid, flush=True); time.sleep(120)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.5)  # the shim has become `sleep`
        assert alive(child) and "sleep" in Path(f"/proc/{child}/cmdline").read_text()
        parent.kill()
    deadline = time.monotonic() + 5
    while alive(child):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)


def test_the_shim_starts_nothing_when_the_parent_is_already_gone() -> None:
    gone = subprocess.run(
        [sys.executable, "-m", "shared.die_with_parent", "1", str(int(signal.SIGTERM)), "true"],
        cwd=ROOT,
    )
    assert gone.returncode == 1


def test_logs_are_rotated_at_start_when_over_the_size(tmp_path: Path) -> None:
    log = child_logs.log_file(tmp_path, "worker:predict-gpu0")
    assert log.name == "worker-predict-gpu0.log"
    for run in range(5):
        log.write_text(f"run {run}\n" + "x" * 100)
        child_logs.rotate(log, max_bytes=50, keep=3)
    assert not log.exists()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [
        "worker-predict-gpu0.log.1",
        "worker-predict-gpu0.log.2",
        "worker-predict-gpu0.log.3",
    ]
    assert (tmp_path / "worker-predict-gpu0.log.1").read_text().startswith("run 4")
    small = tmp_path / "api.log"
    small.write_text("short\n")
    child_logs.rotate(small, max_bytes=50)
    assert small.read_text() == "short\n"


def test_verbose_shows_each_new_line_with_its_role(tmp_path: Path) -> None:
    shown: list[str] = []
    follow = child_logs.Follow(shown.append)
    log = tmp_path / "api.log"
    log.write_text("before this run\n")
    follow.add("api", log, child_logs.size(log))
    with log.open("a") as f:
        f.write("one\ntw")
    follow.pump()
    with log.open("a") as f:
        f.write("o\n")
    follow.pump()
    assert shown == ["api | one", "api | two"]
