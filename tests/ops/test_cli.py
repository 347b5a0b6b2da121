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
from shared.artifacts import open_store
from shared.db import jobs, model_registry
from shared.db.session import session_scope
from shared.jobstate import JobKind
from shared.processes import free_port
from shared.schemas import TrainRequest
from shared.validation import resolve_train
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


def run(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``torchqueue ARGS`` with ``env`` and none of the session's TORCHQUEUE_ variables
    (nor XDG_DATA_HOME: the per-user home is then under HOME)."""
    drop = ("TORCHQUEUE_", "XDG_DATA_HOME")
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=cwd,
        env=base | {"PYTHONPATH": str(ROOT)} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_clear_error(result: subprocess.CompletedProcess[str], lines: int = 2) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert 1 <= len(result.stderr.strip().splitlines()) <= lines, result.stderr
    return result.stderr


def test_a_connection_error_names_the_url_and_where_it_came_from(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    said = one_clear_error(run({"TORCHQUEUE_API_URL": dead}, "jobs", "list"))
    assert f"cannot reach the API at {dead} (from TORCHQUEUE_API_URL)" in said
    # No URL given: the one that `torchqueue up` recorded in the home, from any directory.
    home = tmp_path / "home"
    home.mkdir()
    recorded = f"http://127.0.0.1:{free_port()}"
    (home / "up.json").write_text(json.dumps({"api_url": recorded}))
    said = one_clear_error(run({"TORCHQUEUE_HOME": str(home)}, "jobs", "list", cwd=tmp_path))
    assert f"cannot reach the API at {recorded} (recorded by `torchqueue up` in " in said
    assert str(home / "up.json") in said and "TORCHQUEUE_API_URL" in said


def test_a_refused_key_names_the_url_and_the_variable(api_url: str, tmp_path: Path) -> None:
    env = {"TORCHQUEUE_API_URL": api_url, "TORCHQUEUE_HOME": str(tmp_path)}
    said = one_clear_error(run(env | {"TORCHQUEUE_API_KEY": "tq_nope_" + "x" * 24}, "workers"))
    assert f"(the API at {api_url}; the key in TORCHQUEUE_API_KEY)" in said
    said = one_clear_error(run(env, "workers"))
    assert "no key: set TORCHQUEUE_API_KEY, or run `torchqueue up`" in said
    assert str(tmp_path / "admin.key") in said


@pytest.mark.parametrize("command", [["jobs", "list"], ["up"], ["api"], ["worker", "--cpu"]])
def test_a_placeholder_secret_is_named_by_its_variable(command: list[str]) -> None:
    said = one_clear_error(run({"TORCHQUEUE_BOOTSTRAP_KEY": "change-me-please"}, *command))
    assert said.startswith("Error: TORCHQUEUE_BOOTSTRAP_KEY: use a random secret")
    assert "bootstrap_key" not in said


def test_a_row_with_nan_is_refused_naming_it() -> None:
    said = one_clear_error(run({}, "predict", "iris-mlp", "[6.7, 3.0, 5.2, 2.3]", "[5.1, NaN]"))
    assert said == "Error: input 2, [5.1, NaN]: NaN is not a number; a feature must be finite\n"


def _iris_model() -> str:
    """A real mlp of four features, trained here for one epoch and registered."""
    from workers import modelio
    from workers.training import train

    name = unique("rows")
    body = {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"}}
    spec = resolve_train(TrainRequest.model_validate(body | {"training": {"epochs": 1}}))
    trained = train(spec)
    with session_scope() as s:
        job = jobs.create_job(s, kind=JobKind.train, model_name=name, spec={}, queue="t")
    saved = modelio.save(trained, open_store(), f"models/{name}/{job.id}")
    with session_scope() as s:
        model_registry.register_model_version(
            s, model_name=name, family="mlp", params=spec.params,
            input_schema=trained.input_schema, metrics=trained.metrics,
            artifact_uri=saved.uri, sha256=saved.sha256, job_id=job.id,
        )  # fmt: skip
    return name


def test_a_row_split_by_the_shell_is_hinted_at(api_url: str) -> None:
    said = one_clear_error(tq(api_url, "predict", _iris_model(), "5.1", "3.5", "1.4", "0.2"), 3)
    assert "(field: inputs" in said
    assert "quote a row of features as one argument, e.g. '[5.1, 3.5, 1.4, 0.2]'" in said


def test_an_old_home_in_the_directory_is_noticed_once(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / ".torchqueue").mkdir(parents=True)
    (work / ".torchqueue" / "torchqueue.db").touch()
    env = {"HOME": str(tmp_path / "user"), "TORCHQUEUE_API_URL": f"http://127.0.0.1:{free_port()}"}
    first = run(env, "jobs", "list", cwd=work)
    home = tmp_path / "user" / ".local" / "share" / "torchqueue"
    assert f"note: {work / '.torchqueue'} is no longer the default home; it is now {home}" in (
        first.stderr
    )
    assert f"export TORCHQUEUE_HOME={work / '.torchqueue'}" in first.stderr
    assert "note:" not in run(env, "jobs", "list", cwd=work).stderr


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
