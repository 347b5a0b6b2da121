"""`make install`'s choice of torch build (ops/torch_index.py), with a fake `nvidia-smi` on
PATH and a local stand-in for PyTorch's index: nothing is downloaded."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import torch_index
from tests.helpers import ROOT

SCRIPT = ROOT / "ops" / "torch_index.py"
GPU = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f3c…)"


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    """An HTTP server that answers 200 for every build's ``torch/`` page."""

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path.endswith("/torch/") else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent() -> Iterator[str]:
    """An index that takes the connection and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/whl"


def _bin(tmp_path: Path, smi: str | None) -> Path:
    """A PATH holding only a fake ``nvidia-smi`` (a shell script body), or nothing."""
    path = tmp_path / "bin"
    path.mkdir()
    if smi is not None:
        fake = path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n{smi}\n")
        fake.chmod(0o755)
    return path


def _choose(path: Path, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--base-url", base_url, "--timeout", "1", *args],
        env={"PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("smi", "build"),
    [
        (f"echo '{GPU}'", "cu128"),
        ("echo 'NVIDIA-SMI has failed: no driver'; exit 9", "cpu"),
        ("echo 'No devices were found'", "cpu"),
        (None, "cpu"),
    ],
)
def test_auto_takes_the_cuda_build_only_where_nvidia_smi_lists_a_gpu(
    tmp_path: Path, index: str, smi: str | None, build: str
) -> None:
    chosen = _choose(_bin(tmp_path, smi), index)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.split() == ["--index-url", f"{index}/{build}"]
    assert f"the {build} build" in chosen.stderr


@pytest.mark.parametrize("build", ["cpu", "cu126", "cu128"])
def test_one_variable_overrides_the_choice(tmp_path: Path, index: str, build: str) -> None:
    chosen = _choose(_bin(tmp_path, f"echo '{GPU}'"), index, "--index", build)
    assert chosen.stdout.split() == ["--index-url", f"{index}/{build}"]


def test_default_uses_the_configured_index(tmp_path: Path, index: str) -> None:
    chosen = _choose(_bin(tmp_path, f"echo '{GPU}'"), index, "--index", "default")
    assert chosen.returncode == 0 and chosen.stdout.split() == []


def test_an_unknown_build_is_refused(tmp_path: Path, index: str) -> None:
    chosen = _choose(_bin(tmp_path, None), index, "--index", "cuda")
    assert chosen.returncode != 0 and "TORCH_INDEX='cuda'" in chosen.stderr


def test_an_index_that_does_not_answer_falls_back_quickly(tmp_path: Path, silent: str) -> None:
    started = time.monotonic()
    chosen = _choose(_bin(tmp_path, None), silent)
    assert time.monotonic() - started < 10
    assert chosen.returncode == 0 and chosen.stdout.split() == []
    assert "did not answer" in chosen.stderr and "configured package index" in chosen.stderr


def test_macos_and_windows_take_the_default_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert torch_index.choose("auto", "http://127.0.0.1:9/whl", 0.1) == []


def test_make_install_passes_the_choice_to_pip() -> None:
    dry = subprocess.run(
        ["make", "-n", "install", "VENV=/nonexistent", "TORCH_INDEX=cu126"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    [line] = [x for x in dry.stdout.splitlines() if "torch_index.py" in x]
    assert "--index 'cu126'" in line
    assert "pip install torch==2.13.0 $index" in dry.stdout
