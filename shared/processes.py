"""Child processes and loopback ports, done one way for everyone who starts processes
(the local supervisor, the per-GPU worker, the benchmarks, the tests): start a command in
a process group of its own, stop that group (SIGTERM, a grace period, then SIGKILL), and
find a free port. A process group, so that stopping a Celery worker also stops its pool
child, and stopping ``make`` the command it runs. A supervisor's children can be made to
die with it (``die_with_parent``), whatever kills it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (as uvicorn and tornado do, with
    SO_REUSEADDR, so that connections still closing on it do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    own_group: bool = True,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with nothing on its stdin, its output and errors appended to ``log``
    (else ours), in ``env`` (else ours) and ``cwd`` (else ours).

    It leads a session and process group of its own unless ``own_group`` is False: then
    it stays in ours, and whatever signals our group (Ctrl-C, a SIGKILL of the group)
    reaches it too; ``stop`` it with ``group=False``. With ``die_with_parent`` it gets
    SIGTERM when this process dies, even of SIGKILL (Linux; ``shared.die_with_parent``):
    spawn from the main thread then, since the kernel watches the thread that forked."""
    env = dict(env) if env is not None else None
    if die_with_parent:
        shim = [sys.executable, "-m", "shared.die_with_parent", str(os.getpid())]
        argv = [*shim, str(int(signal.SIGTERM)), *argv]
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
    procs: Iterable[subprocess.Popen[bytes]],
    timeout: float = 15.0,
    *,
    group: bool = True,
    leader_first: bool = False,
) -> None:
    """SIGTERM every process still running (its whole group, with ``group``), wait for them
    all up to ``timeout`` seconds in total, then SIGKILL those left. With ``group``, a
    process that its stopped leader left behind in the group is killed too.

    ``leader_first``: SIGTERM the leader alone and let it stop its own children, as a
    Celery worker stops its pool: a pool child that dies of a SIGTERM of its own before
    its parent has begun to stop is replaced, and the replacement then logged as lost."""
    procs = list(procs)

    def send(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if group and not (leader_first and sig == signal.SIGTERM):
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


def freeze_heap() -> None:
    """Once a long-running process has started: what it made to start (modules, the app,
    torch) is kept for good, so the collector's full passes leave it out. Without this a
    full pass in the API walked every object the process had (120 to 130 ms, with
    nothing to collect) while no request moved. Once per process."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def exit_now(status: int) -> None:
    """End this process with ``status`` once its work is done: run the exit handlers and
    flush, then leave without the interpreter's teardown of every module, which takes
    seconds in a process that has loaded torch and scikit-learn, and does nothing that
    matters after a clean shutdown."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
