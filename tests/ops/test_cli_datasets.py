"""``torchqueue datasets`` and the commands that train on and predict over a stored data
set, against a started API process and the session's worker, as a user types them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from api.client import Client
from ops.client_commands import render
from shared.processes import free_port
from tests.api.test_client_datasets import write_csv
from tests.helpers import unique
from tests.ops.test_cli import one_clear_error, tq
from tests.test_import_rules import serving


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("cli-datasets") / "api.log"
    with serving(["api"], free_port(), "/healthz", log) as base:
        yield base


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_upload_list_show_and_delete(api_url: str, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "rows.csv", 40_000)
    name = unique("cli-data")
    uploaded = ok(tq(api_url, "datasets", "upload", str(data), "--name", name, "--label", "label"))
    assert "100%" in uploaded.stderr and "MB/s" in uploaded.stderr  # the bar's last state
    assert f"{name} version 1: 40,000 rows, 4 columns" in uploaded.stdout
    assert "columns: id int64, x1 float64, x2 float64, label int64" in uploaded.stdout
    ok(tq(api_url, "datasets", "upload", str(data), "--name", name))

    listed = ok(tq(api_url, "datasets", "list", "--limit", "500")).stdout
    assert any(line.split()[:2] == [name, "2"] for line in listed.splitlines())
    shown = ok(tq(api_url, "datasets", "show", name)).stdout
    assert "VERSION" in shown and "40,000" in shown
    assert "version:  2" in shown and "rows:     40,000" in shown
    assert "sha256:" in shown and "created:" in shown
    assert "  label  int64  (0: 20,000, 1: 20,000)" in shown
    one = json.loads(ok(tq(api_url, "datasets", "show", name, "--version", "1", "--json")).stdout)
    assert (one["version"], one["rows"]) == (1, 40_000)

    said = ok(tq(api_url, "datasets", "delete", name, "1")).stdout
    assert f"data set {name} version 1 deleted" in said
    gone = one_clear_error(tq(api_url, "datasets", "show", name, "--version", "1"))
    assert "Error:" in gone


def test_mistakes_are_one_clear_line(api_url: str, tmp_path: Path) -> None:
    table = write_csv(tmp_path / "rows.csv", 3)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,0\n3,4\n")
    for args, expected in [
        (["train", "m", "--family", "mlp", "--data", str(table)],
         f"upload it with `torchqueue datasets upload {table} --name NAME`, then train with "
         "`--dataset NAME --label COLUMN`"),
        (["train", "m", "--family", "mlp", "--dataset", "d"], "--dataset needs --label"),
        (["train", "m", "--family", "mlp", "--builtin", "iris", "--label", "y"],
         "--label goes with --dataset"),
        (["predict", "m", "--dataset", "d"], "--dataset needs --out"),
        (["predict", "m", "--dataset", "d", "--out", "p.json"], ".parquet or .csv"),
        (["datasets", "show", unique("none")], "no data set"),
        (["datasets", "upload", str(ragged), "--name", unique("ragged")], "row"),
    ]:  # fmt: skip
        result = tq(api_url, *args)
        assert result.returncode != 0, args
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_on_a_data_set_and_predict_over_it(
    api_url: str, worker: Path, tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "rows.csv", 2_000)
    name = unique("cli-train")
    ok(tq(api_url, "datasets", "upload", str(data), "--name", name))
    trained = ok(
        tq(api_url, "train", name, "--family", "mlp", "--dataset", name, "--label", "label",
           "--features", "x1,x2", "--epochs", "3", "--wait")
    )  # fmt: skip
    assert f"{name} version 1" in trained.stdout
    with Client(api_url) as client:
        lineage = client.model_version(name, 1)["dataset"]
    assert (lineage["name"], lineage["version"]) == (name, 1)

    rows = pa_csv.read_csv(data)
    with Client(api_url) as client:
        inputs = [
            [a, b] for a, b in zip(rows["x1"].to_pylist(), rows["x2"].to_pylist(), strict=True)
        ]
        expected = [o["label"] for o in client.predict(name, inputs, wait=120)["result"]["outputs"]]
    for out in ("preds.parquet", "preds.csv"):
        path = tmp_path / out
        predicted = ok(
            tq(api_url, "predict", name, "--dataset", name, "--features", "x1,x2", "--id", "id",
               "--out", str(path))
        )  # fmt: skip
        assert "rows 2,000/2,000" in predicted.stderr
        assert f"predictions saved to {path}" in predicted.stdout
        got = pq.read_table(path) if out.endswith("parquet") else pa_csv.read_csv(path)
        assert got["id"].to_pylist() == rows["id"].to_pylist()  # in order
        assert got["label"].to_pylist() == expected

    refused = one_clear_error(tq(api_url, "datasets", "delete", name, "1"))
    assert "trained on" in refused or "model" in refused


def test_the_progress_of_a_batch_prediction() -> None:
    progress = {"rows_done": 40_000, "rows": 160_000, "chunks_done": 1, "chunks": 4,
                "fraction": 0.25}  # fmt: skip
    job = {"state": "running", "progress": progress}
    assert render(job) == "[######..................] running rows 40,000/160,000"


def test_a_file_over_the_size_limit_is_refused_in_one_line(
    setting: Callable[[str, str], None], tmp_path: Path
) -> None:
    setting("TORCHQUEUE_MAX_DATASET_MB", "1")
    data = write_csv(tmp_path / "rows.csv", 150_000)  # about 3 MB
    with serving(["api"], free_port(), "/healthz", tmp_path / "api.log") as base:
        result = tq(base, "datasets", "upload", str(data), "--name", unique("big"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "1 MB" in last, result.stderr
