"""Child processes and loopback ports, done one way for everyone who starts processes
(the local supervisor, the per-GPU worker, the benchmarks, the tests): start a command in
a process group of its own, stop that group (SIGTERM, a grace period, then SIGKILL), and
find a free port. A process group, so that stopping a Celery worker also stops its pool
child, and stopping ``make`` the command it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    own_group: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with nothing on its stdin, its output and errors appended to ``log``
    (else ours), in ``env`` (else ours) and ``cwd`` (else ours).

    It leads a session and process group of its own unless ``own_group`` is False: then
    it stays in ours, and whatever signals our group (Ctrl-C, a SIGKILL of the group)
    reaches it too; ``stop`` it with ``group=False``."""
    env = dict(env) if env is not None else None
    if log is None:
        return subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=own_group
        )
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group that ``proc`` leads, if any of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0, *, group: bool = True) -> None:
    """``stop_all`` for one process."""
    stop_all([proc], timeout, group=group)


def stop_all(
    procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15.0, *, group: bool = True
) -> None:
    """SIGTERM every process still running (its whole group, with ``group``), wait for them
    all up to ``timeout`` seconds in total, then SIGKILL those left. With ``group``, a
    process that its stopped leader left behind in the group is killed too."""
    procs = list(procs)

    def send(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if group:
            signal_group(proc, sig)
        else:
            proc.send_signal(sig)  # nothing when it has already exited

    for proc in procs:
        if proc.poll() is None:
            send(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            send(proc, signal.SIGKILL)
            proc.wait()
        if group:
            signal_group(proc, signal.SIGKILL)
