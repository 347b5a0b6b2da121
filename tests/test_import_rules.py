"""The layers hold (DESIGN.md, Layout): ``shared`` imports none of ``api``, ``workers``,
``ops``; ``api`` neither ``workers`` nor ``ops``; ``workers`` neither ``api`` nor ``ops``
(nor runs their modules as commands); the API and Flower never load torch. And no module
uses a private name (``_name``) of another of our modules."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from shared import processes
from shared.processes import free_port
from tests.helpers import AUTH, FLOWER_PASSWORD, ROOT, start_process

OURS = ("api", "ops", "shared", "tests", "workers")
# What each package may not import; ``ops`` and ``tests`` may import anything.
FORBIDDEN = {
    "api": {"torch", "workers", "ops"},
    "shared": {"torch", "api", "workers", "ops"},
    "workers": {"api", "ops"},
}


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(path: Path) -> set[str]:
    """The top-level packages that ``path`` imports, anywhere in it (lazily too)."""
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_no_layer_it_must_not(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in sorted(_imports(path) & FORBIDDEN[package])
    ]
    assert not found, found


def test_workers_run_no_module_of_ops_or_api() -> None:
    """Not even as a command of their own (``python -m ops.cli``)."""
    module = re.compile(r"^(api|ops)(\.\w+)+$")
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}"
        for path in _sources("workers")
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and module.match(node.value)
    ]
    assert not found, found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imported_from(node: ast.ImportFrom, path: Path) -> str:
    """The absolute name of the module that ``node`` imports from."""
    if node.level == 0:
        return node.module or ""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[: -node.level]
    return ".".join([*package, *([node.module] if node.module else [])])


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _private_uses(path: Path) -> list[str]:
    """``from X import _name`` with X one of ours, and ``m._name`` where ``m`` is bound by
    an import from one of our packages."""
    tree, where = _tree(path), path.relative_to(ROOT)
    found: list[str] = []
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _imported_from(node, path)
            if node.level == 0 and source.split(".")[0] not in OURS:
                continue
            found += [
                f"{where}:{node.lineno}: from {source} import {a.name}"
                for a in node.names
                if _private(a.name)
            ]
            bound |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            bound |= {
                a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in OURS
            }
    found += [
        f"{where}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and _root_name(node.value) in bound
    ]
    return found


@pytest.mark.parametrize("package", OURS)
def test_no_module_uses_a_private_name_of_another(package: str) -> None:
    found = [use for path in _sources(package) for use in _private_uses(path)]
    assert not found, found


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
        processes.stop(proc)


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
        # Flower's own metrics and health check too.
        for path in ("/metrics", "/healthcheck"):
            assert httpx.get(f"{base}{path}").status_code == 401, path
            assert httpx.get(f"{base}{path}", auth=("flower", "guess")).status_code == 401
            assert httpx.get(f"{base}{path}", auth=login).status_code == 200, path
