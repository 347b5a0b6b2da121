"""``torchqueue families`` and the help of ``train --family``, against a started API
process, as a user types them: the built-in families, a plugin's that a worker reported,
and the built-ins alone when the API does not answer."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torchqueue_example_family.family import FAMILY as RESMLP

from api.client import Client
from shared.db import family_catalogue
from shared.db.session import session_scope
from shared.families import FAMILIES
from shared.processes import free_port
from tests.ops.test_cli import one_clear_error, run, tq
from tests.test_import_rules import serving

BUILTINS = {
    "mlp": ("features", "classification,regression"),
    "text_lstm": ("text", "classification"),
    "text_transformer": ("text", "classification"),
    "image_cnn": ("image", "classification"),
}
PLUGIN = ("torchqueue-example-family", "0.1.0")
# How long a `--help` may take when the API does not answer (it waits 1 s for it).
HELP_SECONDS = 5


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("cli-families") / "api.log"
    with serving(["api"], free_port(), "/healthz", log) as base:
        yield base


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def report_resmlp() -> None:
    """What a worker with the example plugin installed reports when it starts."""
    with session_scope() as session:
        family_catalogue.report(session, "test-worker", [RESMLP.describe(*PLUGIN)])


def rows(listing: str) -> dict[str, list[str]]:
    """The table of `torchqueue families`, its header checked, by family name."""
    header, *lines = listing.strip().splitlines()
    assert header.split() == ["NAME", "INPUT", "TASKS", "FROM", "POOLS"]
    return {line.split()[0]: line.split()[1:] for line in lines}


def family_help(stdout: str) -> list[str]:
    """The families that the help of `train --family` names, in order."""
    flat = " ".join(stdout.split())
    assert "--family" in flat
    listed = flat.split("the model family: ", 1)[1].split(" (`torchqueue families` for more)")[0]
    return listed.split(", ")


def test_the_builtin_families_are_listed(api_url: str) -> None:
    table = rows(ok(tq(api_url, "families")))
    for name, (kind, tasks) in BUILTINS.items():
        assert table[name][:3] == [kind, tasks, "built-in"], table[name]


def test_one_family_in_full(api_url: str) -> None:
    shown = ok(tq(api_url, "families", "mlp"))
    first, about, pools, params, *lines = shown.splitlines()
    assert first == f"mlp: {FAMILIES['mlp'].description}"
    assert about.split() == ["input:", "features", "tasks:", "classification,", "regression",
                             "from:", "built-in"]  # fmt: skip
    assert pools.startswith("  pools: ")
    assert params == "  parameters:"
    by_name = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}
    assert set(by_name) == {"hidden_sizes", "activation", "dropout", "task"}
    assert by_name["hidden_sizes"] == "[64, 64]     list of integer 1..8192, at most 16"
    assert by_name["activation"].split() == ['"relu"', '"relu"', "|", '"sigmoid"', "|", '"tanh"']
    assert by_name["dropout"].split() == ["0.0", "number", "0.0..<1.0"]
    assert by_name["task"].startswith('"auto"')
    assert "auto: regression for fractional targets, else classification" in by_name["task"]


def test_json_is_the_apis_answer(api_url: str) -> None:
    answer = json.loads(ok(tq(api_url, "families", "--json")))
    with Client(api_url) as client:
        assert answer == client.families()
    assert set(BUILTINS) <= set(answer)
    assert all(family["name"] == name for name, family in answer.items())
    mlp = answer["mlp"]
    assert mlp["name"] == "mlp" and mlp["builtin"] is True
    assert mlp["defaults"] == {"hidden_sizes": [64, 64], "activation": "relu", "dropout": 0.0,
                               "task": "auto"}  # fmt: skip
    assert mlp["params"]["properties"]["dropout"]["exclusiveMaximum"] == 1.0
    assert isinstance(mlp["pools"], dict)
    one = json.loads(ok(tq(api_url, "families", "text_lstm", "--json")))
    assert list(one) == ["text_lstm"] and one["text_lstm"] == answer["text_lstm"]


def test_a_family_a_worker_reported_shows_too(api_url: str) -> None:
    report_resmlp()
    table = rows(ok(tq(api_url, "families")))
    assert table["resmlp"][:4] == ["features", "classification", PLUGIN[0], PLUGIN[1]]

    shown = ok(tq(api_url, "families", "resmlp"))
    assert shown.startswith(f"resmlp: {RESMLP.description}\n")
    assert f"from: {PLUGIN[0]} {PLUGIN[1]}" in shown
    smoothing = next(line for line in shown.splitlines() if "label_smoothing" in line)
    assert smoothing.split()[:4] == ["label_smoothing", "0.1", "number", "0.0..<1.0"]
    assert smoothing.endswith("of the cross-entropy loss the model trains on")

    answer = json.loads(ok(tq(api_url, "families", "resmlp", "--json")))["resmlp"]
    assert answer["builtin"] is False
    assert (answer["package"], answer["version"]) == PLUGIN
    assert answer["defaults"]["label_smoothing"] == 0.1


def test_an_unknown_family_is_one_clear_line(api_url: str) -> None:
    said = one_clear_error(tq(api_url, "families", "nosuch"), lines=1)
    assert said.startswith("Error: no family 'nosuch'; there are ")
    for name in BUILTINS:
        assert name in said


def test_train_help_lists_the_families_the_api_knows(api_url: str) -> None:
    report_resmlp()
    listed = family_help(ok(tq(api_url, "train", "--help")))
    with Client(api_url) as client:
        assert listed == sorted(client.families())
    assert {*BUILTINS, "resmlp"} <= set(listed)


def test_train_help_without_the_api_lists_the_builtins(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        quiet = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for how in (
            lambda: tq("http://127.0.0.1:9", "train", "--help"),
            lambda: run({"TORCHQUEUE_API_URL": "http://127.0.0.1:9",
                         "TORCHQUEUE_HOME": str(tmp_path)}, "train", "--help"),
            lambda: tq(quiet, "train", "--help"),
        ):  # fmt: skip
            start = time.monotonic()
            stdout = ok(how())
            assert time.monotonic() - start < HELP_SECONDS
            assert family_help(stdout) == sorted(BUILTINS)
