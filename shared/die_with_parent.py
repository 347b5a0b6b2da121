"""Start-up shim: run a command that dies with the process that started it.

    python -m shared.die_with_parent PARENT_PID SIGNAL COMMAND [ARG...]

It asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) to send SIGNAL to this process
when its parent dies, whatever kills the parent (SIGKILL included), then becomes COMMAND
(``exec``: the same pid). The setting survives the ``exec``, so the command needs no code
of its own for it. ``shared.processes.spawn(..., die_with_parent=True)`` starts commands
through it; a shim rather than a ``preexec_fn``, which is unsafe in a parent with threads.

If the parent died before the signal was armed, the command is not started at all. On
systems without ``prctl`` the command is simply run, and only its parent's own handlers
stop it.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (cleared in
    children made by ``fork``, kept across ``exec``); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: python -m shared.die_with_parent PARENT_PID SIGNAL COMMAND [ARG...]")
    parent, signum, command = int(argv[0]), int(argv[1]), argv[2:]
    set_parent_death_signal(signum)
    if os.getppid() != parent:  # the parent is already gone: start nothing
        sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
