"""``torchqueue sweep``, against a started API process and a real worker, as a user types
it: start from a base job and a YAML space, the live table, list, cancel, and one clear
line for a file that cannot be read."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.sweep_commands import render
from shared.processes import free_port
from tests.helpers import unique
from tests.ops.test_cli import one_clear_error, tq
from tests.test_import_rules import serving

pytestmark = pytest.mark.slow

SPACE_YAML = """\
# what the sweep varies
training.learning_rate: {type: log_uniform, low: 0.001, high: 0.1}
params.hidden_sizes:
  type: choice
  values: [[8], [16, 8]]
"""


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("cli-sweeps") / "api.log"
    with serving(["api"], free_port(), "/healthz", log) as base:
        yield base


def _files(tmp_path: Path, epochs: int = 3) -> tuple[Path, Path]:
    base = {"model_name": unique("cli-sweep"), "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": epochs}}  # fmt: skip
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "space.yaml").write_text(SPACE_YAML)
    return tmp_path / "base.json", tmp_path / "space.yaml"


def _started(out: str) -> str:
    found = re.match(r"sweep ([0-9a-f-]{36}) running: (\d+) trials queued", out)
    assert found, out
    return found.group(1)


def test_start_watch_and_promote(api_url: str, worker: Path, tmp_path: Path) -> None:
    base, space = _files(tmp_path)
    done = tq(api_url, "sweep", "start", "--base", str(base), "--space", str(space),
              "--trials", "3", "--parallel", "2", "--metric", "val_accuracy", "--maximize",
              "--promote", "production", "--watch")  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweep_id = _started(done.stdout)
    table = done.stdout.splitlines()[1:]
    assert table[0].startswith(f"sweep {sweep_id}  finished")
    assert "val_accuracy (maximize)  3/3 trials, 2 at once: 3 complete" in table[0]
    assert "production → v" in table[1]
    assert table[2].split() == ["#", "STATE", "val_accuracy", "EPOCH", "learning_rate",
                                "hidden_sizes"]  # fmt: skip
    trials = table[3:]
    assert len(trials) == 3 and sum(line.startswith("*") for line in trials) == 1
    assert all("complete" in line.split()[:3] for line in trials)
    listed = tq(api_url, "sweep", "list")
    assert sweep_id in listed.stdout and "3/3" in listed.stdout
    again = tq(api_url, "sweep", "show", sweep_id, "--once")
    assert again.stdout.splitlines()[0] == table[0]


def test_cancel_and_the_errors_a_user_makes(api_url: str, tmp_path: Path) -> None:
    base, space = _files(tmp_path)
    started = tq(api_url, "sweep", "start", "--base", str(base), "--space", str(space),
                 "--trials", "50", "--parallel", "1")  # fmt: skip
    sweep_id = _started(started.stdout)
    assert tq(api_url, "sweep", "cancel", sweep_id).stdout.strip() == f"sweep {sweep_id} cancelled"
    said = one_clear_error(tq(api_url, "sweep", "cancel", sweep_id))
    assert "cancelled already" in said
    (tmp_path / "bad.yaml").write_text("training.learning_rate: [unclosed\n")
    bad = tq(api_url, "sweep", "start", "--base", str(base), "--space",
             str(tmp_path / "bad.yaml"), "--trials", "2")  # fmt: skip
    assert bad.returncode == 2 and "is not JSON or YAML" in bad.stderr
    assert "Traceback" not in bad.stderr
    (tmp_path / "wrong.yaml").write_text("params.dropout: {type: uniform, low: 0, high: 2}\n")
    wrong = tq(api_url, "sweep", "start", "--base", str(base), "--space",
               str(tmp_path / "wrong.yaml"), "--trials", "2")  # fmt: skip
    said = one_clear_error(wrong)
    assert "params.dropout = 2" in said and "(field: space.params.dropout)" in said


def test_the_table_marks_the_best_and_shows_each_trials_values() -> None:
    values = {"training.learning_rate": 0.0123456, "params.hidden_sizes": [8]}
    trial = {"number": 0, "state": "complete", "value": 0.97, "epoch": 3, "params": values}
    other = trial | {"number": 1, "state": "pruned", "value": None, "epoch": 1}
    running = trial | {"number": 2, "state": "pending", "value": None, "epoch": 2, "latest": 0.5}
    sweep = {"id": "s1", "state": "running", "model_name": "m", "message": None,
             "counts": {"complete": 1, "pruned": 1}, "best": trial,
             "trials": [trial, other, running],
             "spec": {"request": {"metric": "val_accuracy", "direction": "maximize", "trials": 4,
                                  "parallel": 2, "space": trial["params"]}}}  # fmt: skip
    lines = render(sweep).splitlines()
    assert lines[0] == ("sweep s1  running  m  val_accuracy (maximize)  3/4 trials, 2 at once: "
                        "1 complete, 1 pruned")  # fmt: skip
    assert lines[2].split() == ["*", "0", "complete", "0.97", "3", "0.01235", "[8]"]
    assert lines[3].split() == ["1", "pruned", "-", "1", "0.01235", "[8]"]
    # A running trial: its metric at the epoch it has reached, marked as not final.
    assert lines[4].split() == ["2", "pending", "0.5…", "2", "0.01235", "[8]"]
