"""The log files of the processes that ``torchqueue up`` starts: one per process, named
after its role, under ``home/logs``. Rotated when ``up`` starts (a file over
``MAX_BYTES`` becomes ``.1``, keeping ``KEEP``), followed for ``--verbose``, and read back
for the last lines of a process that died."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024
KEEP = 3


def log_file(directory: Path, role: str) -> Path:
    """``logs/worker-train-cpu.log`` for the role ``worker:train-cpu``."""
    return directory / f"{re.sub(r'[^A-Za-z0-9._-]', '-', role)}.log"


def rotate(path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
    """When ``path`` is over ``max_bytes``: ``path`` → ``path.1`` → … → ``path.KEEP``,
    the oldest dropped."""
    if not path.is_file() or path.stat().st_size <= max_bytes:
        return
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def last_lines(path: Path, start: int = 0, count: int = 12) -> list[str]:
    """The last ``count`` lines written to ``path`` after its first ``start`` bytes."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(max(start, size(path) - 64 * 1024))
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if line.strip()][-count:]


@dataclass
class _Followed:
    role: str
    path: Path
    offset: int
    partial: bytes = b""


class Follow:
    """The new lines of several log files, each shown with its role (``--verbose``)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.files: list[_Followed] = []
        self.width = 0

    def add(self, role: str, path: Path, offset: int) -> None:
        self.files.append(_Followed(role, path, offset))
        self.width = max(self.width, len(role))

    def pump(self) -> None:
        for followed in self.files:
            if size(followed.path) <= followed.offset:
                continue
            with followed.path.open("rb") as f:
                f.seek(followed.offset)
                data = followed.partial + f.read()
                followed.offset = f.tell()
            *lines, followed.partial = data.split(b"\n")
            for line in lines:
                self.write(f"{followed.role:<{self.width}} | {line.decode(errors='replace')}")
