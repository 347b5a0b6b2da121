"""The command line against a started API process and the session's worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.client_commands import render
from shared.processes import free_port
from tests.helpers import ROOT, unique
from tests.test_import_rules import serving


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("cli") / "api.log"
    with serving(["api"], free_port(), "/healthz", log) as base:
        yield base


def tq(api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "--api-url", api_url, *args],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
def test_train_wait_predict_and_inspect(api_url: str, worker: Path, tmp_path: Path) -> None:
    name = unique("cli")
    data = tmp_path / "data.json"
    texts = ["这是一个文本分类的例子。", "我非常喜欢这个课程。", "这是一个关于机器学习的文章。"]
    data.write_text(json.dumps({"inputs": texts, "labels": [0, 1, 0]}, ensure_ascii=False))
    trained = tq(
        api_url,
        "train",
        name,
        "--family",
        "text_lstm",
        "--data",
        str(data),
        "--epochs",
        "6",
        "--wait",
    )
    assert trained.returncode == 0, trained.stderr
    assert "epoch 6/6" in trained.stderr  # the progress bar's last state
    assert f"{name} version 1" in trained.stdout

    predicted = tq(api_url, "predict", name, "这是一个新的文本。")
    assert predicted.returncode == 0, predicted.stderr
    text, answer = predicted.stdout.strip().split("\t")
    assert text == "这是一个新的文本。"
    assert json.loads(answer)["label"] in (0, 1)

    job_id = trained.stdout.split()[1]
    shown = json.loads(tq(api_url, "jobs", "show", job_id, "--json").stdout)
    assert shown["state"] == "succeeded" and shown["model_version"] == 1
    history = tq(api_url, "jobs", "show", job_id).stdout
    assert "state:         succeeded" in history
    for kind in ("queued", "claimed", "succeeded"):
        assert f" {kind} " in history
    finished = tq(api_url, "jobs", "cancel", job_id)
    assert finished.returncode == 1 and "nothing to cancel" in finished.stderr
    waited = tq(api_url, "jobs", "wait", job_id)
    assert f"job {job_id} succeeded" in waited.stdout
    assert job_id in tq(api_url, "jobs", "list", "--model", name).stdout
    assert name in tq(api_url, "models", "list").stdout
    assert "cpu@" in tq(api_url, "workers").stdout
    version = json.loads(tq(api_url, "models", "show", name, "--version", "1").stdout)
    assert version["family"] == "text_lstm"


def test_errors_are_one_clear_line(api_url: str) -> None:
    for args, expected in [
        (["train", "x", "--family", "gpt", "--builtin", "iris"], "unknown family 'gpt'"),
        (["train", "x", "--family", "mlp", "--builtin", "mnist"], "field: dataset.builtin"),
        (["predict", unique("none"), "hello"], "no model"),
        (["jobs", "show", "nope"], "no job 'nope'"),
        (["jobs", "cancel", "nope"], "no job 'nope'"),
        (["train", "x", "--family", "mlp"], "exactly one of --builtin or --data"),
    ]:
        result = tq(api_url, *args)
        assert result.returncode != 0
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


def test_an_unreachable_api_is_a_clear_error() -> None:
    result = tq(f"http://127.0.0.1:{free_port()}", "jobs", "list")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


def test_the_progress_line() -> None:
    job = {
        "state": "running",
        "progress": {
            "epoch": 3,
            "epochs": 12,
            "fraction": 0.25,
            "metrics": {"epoch": 3, "train_loss": 0.51234, "val_accuracy": 0.875},
        },
    }
    line = render(job)
    assert line.startswith("[######..................] running epoch 3/12")
    assert "train_loss=0.5123" in line and "val_accuracy=0.875" in line
    assert render({"state": "queued", "progress": None}).startswith("[" + "." * 24 + "] queued")
