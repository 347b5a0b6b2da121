"""The API and Flower never load torch; ``shared`` and ``api`` never import ``workers``."""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ops.embedded_redis import free_port
from tests.conftest import AUTH, FLOWER_PASSWORD, ROOT, start_process, stop_process


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["api", "shared"])
def test_no_torch_and_no_workers_in(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        assert not _imports(path) & {"torch", "workers"}, path


def _loads_torch(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/" in maps


@contextmanager
def serving(argv: list[str], port: int, path: str, log: Path) -> Iterator[str]:
    """Start a server process; yield its base URL once ``path`` answers; check, at the end,
    that the process never mapped torch's libraries."""
    proc = start_process([*argv, "--port", str(port)], log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}{path}", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield base
        assert not _loads_torch(proc.pid), f"{argv[0]} loaded torch"
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_the_started_api_never_loads_torch(tmp_path: Path) -> None:
    with serving(["api"], free_port(), "/healthz", tmp_path / "api.log") as base:
        # The routes that validate families and data sets, and send a task.
        body = {"model_name": "rules", "family": "mlp", "dataset": {"builtin": "iris"}}
        assert httpx.post(f"{base}/v1/jobs/train", json=body, headers=AUTH).status_code == 201
        assert httpx.get(f"{base}/v1/families", headers=AUTH).status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200


@pytest.mark.slow
def test_flower_never_loads_torch(tmp_path: Path) -> None:
    with serving(["flower"], free_port(), "/healthcheck", tmp_path / "flower.log") as base:
        login = ("flower", FLOWER_PASSWORD)
        assert httpx.get(f"{base}/workers", auth=login).status_code == 200
        # Without its credentials, or with wrong ones, Flower shows nothing.
        assert httpx.get(f"{base}/workers").status_code == 401
        assert httpx.get(f"{base}/workers", auth=("flower", "guess")).status_code == 401
        assert httpx.get(f"{base}/api/tasks").status_code == 401
