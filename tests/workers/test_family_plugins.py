"""Finding the families a worker offers: entry points of installed distributions (here
made on disk for the test), each loaded, checked, and left out with the reason when it
cannot be offered; torchqueue's own families always there."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from shared.families import FAMILIES
from workers.family_plugins import allowed, check_builders, discover

MODULE = """
from shared.families import FAMILIES, MLPParams, Family

def _count(params, shape, n_outputs):
    return 1

def _family(name, builder):
    return Family(name=name, description="a test family", input_kind="features",
                  params=MLPParams, tasks=("classification",), count_parameters=_count,
                  builder=builder)

FAMILY = _family("tinyfam", "fake_torch_half:Builder")
HALF = _family("halfbroken", "no_such_torch_half:Builder")
MLP_CLASH = _family("mlp", "fake_torch_half:Builder")
NOT_A_FAMILY = {"name": "thing"}
"""


def _dist(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[torchqueue.families]\n{entry_points}\n")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Distributions on the path, as pip would leave them, good and bad; the children
    that check torch halves see them too."""
    (tmp_path / "fake_plugin.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "fake_torch_half.py").write_text("class Builder:\n    name = 'tinyfam'\n")
    _dist(tmp_path, "goodplug", "tinyfam = fake_plugin:FAMILY")
    _dist(tmp_path, "badimport", "ghost = no_such_module:FAMILY")
    _dist(tmp_path, "notfamily", "thing = fake_plugin:NOT_A_FAMILY")
    _dist(tmp_path, "clash", "mlp = fake_plugin:MLP_CLASH")
    _dist(tmp_path, "misnamed", "other = fake_plugin:FAMILY")
    _dist(tmp_path, "brokentorch", "halfbroken = fake_plugin:HALF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def test_the_built_ins_and_the_installed_plugins_are_offered() -> None:
    offered = discover()
    assert set(FAMILIES) <= set(offered)
    assert {offered[n].package for n in FAMILIES} == {"torchqueue"}
    assert offered["mlp"].family is FAMILIES["mlp"]
    example = offered["resmlp"]
    assert (example.package, example.version) == ("torchqueue-example-family", "0.1.0")
    assert example.info().params["properties"]["label_smoothing"]["default"] == 0.1


def test_a_plugin_that_cannot_be_offered_is_left_out_with_the_reason(
    installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="workers.family_plugins"):
        offered = discover()
    assert "tinyfam" in offered and offered["tinyfam"].package == "goodplug"
    assert offered["mlp"].family is FAMILIES["mlp"]
    for name in ("ghost", "thing", "other"):
        assert name not in offered
    log = caplog.text
    assert "family ghost of badimport could not be loaded: ModuleNotFoundError" in log
    assert "family thing of notfamily refused: fake_plugin:NOT_A_FAMILY is a dict" in log
    assert "family mlp of clash refused: 'mlp' is a built-in family's name" in log
    assert "the entry point is called 'other' but its family 'tinyfam'" in log


def test_a_plugin_whose_torch_half_does_not_import_is_left_out(
    installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    found = discover()
    assert "halfbroken" in found
    kept = check_builders(found)
    assert "halfbroken" not in kept
    assert {"tinyfam", "resmlp", *FAMILIES} <= set(kept)
    assert "family halfbroken of brokentorch left out: no_such_torch_half:Builder" in caplog.text


def test_the_setting_chooses_the_plugins_and_never_the_built_ins(installed: Path) -> None:
    assert set(discover("none")) == set(FAMILIES)
    assert set(discover("goodplug")) == {*FAMILIES, "tinyfam"}
    assert "resmlp" in discover("torchqueue_example_family, other")
    assert allowed("torchqueue", "none")
    assert not allowed("goodplug", "")
    assert allowed("Good_Plug", "good-plug")
