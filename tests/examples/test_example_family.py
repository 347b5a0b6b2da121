"""The example plugin family ``resmlp`` (examples/torchqueue-example-family): its count
matches the real module, its torch-free half stays torch-free, its preprocessing
round-trips, its hooks compute what they say, and the module learns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torchqueue_example_family.family import FAMILY
from torchqueue_example_family.model import ResMLPBuilder

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "torchqueue-example-family"
ROWS = [[float(i), float(i * i), 1.0 - i, 0.5, -2.0 * i] for i in range(8)]


def _params(**given: Any) -> dict[str, Any]:
    return FAMILY.params.model_validate(given).model_dump()


@pytest.mark.parametrize("given", [{}, {"width": 7, "blocks": 3, "dropout": 0.2}, {"blocks": 1}])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_parameter_count_is_that_of_the_built_module(given: dict[str, Any], n_classes: int) -> None:
    builder, params = ResMLPBuilder(), _params(**given)
    pre = builder.fit_preprocessor(params, ROWS)
    n_outputs = FAMILY.n_outputs("classification", n_classes)
    module = builder.build(params, pre, n_outputs)
    shape = (builder.input_schema(pre)["n_features"],)
    built = sum(p.numel() for p in module.parameters())
    assert FAMILY.parameter_count(params, shape, n_outputs) == built


def test_the_torch_free_half_imports_no_torch() -> None:
    code = 'import sys, torchqueue_example_family.family; assert "torch" not in sys.modules'
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(PLUGIN), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_preprocessor_round_trips_through_json() -> None:
    builder = ResMLPBuilder()
    pre = builder.fit_preprocessor(_params(), ROWS)
    loaded = builder.load_preprocessor(pre.to_json())
    assert builder.input_schema(loaded) == {"kind": "features", "n_features": 5}
    assert torch.equal(loaded.encode(ROWS), pre.encode(ROWS))


def test_the_loss_is_label_smoothed_cross_entropy_for_classes_only() -> None:
    builder = ResMLPBuilder()
    out = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([0, 2, 1])
    loss = builder.loss(_params(label_smoothing=0.2), "ce")
    assert loss is not None
    smoothed = torch.nn.functional.cross_entropy(out, y, label_smoothing=0.2)
    torch.testing.assert_close(loss(out, y), smoothed)
    assert not torch.allclose(smoothed, torch.nn.functional.cross_entropy(out, y))
    assert builder.loss(_params(), "bce") is None
    assert builder.loss(_params(), "mse") is None


def test_top2_accuracy_counts_the_rows_whose_target_is_in_the_two_highest() -> None:
    builder = ResMLPBuilder()
    top2 = builder.metrics(_params(), "ce")["top2_accuracy"]
    out = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 5.0, 4.0]])
    # First, second, fourth highest.
    hits = top2(out, torch.tensor([0, 1, 1]))
    assert hits.ndim == 0
    assert hits.item() == 2.0
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    assert top2(two, torch.tensor([1, 0, 1])).item() == 3.0
    assert builder.metrics(_params(), "bce") == {}
    assert builder.metrics(_params(), "mse") == {}


def test_the_module_learns_digits() -> None:
    digits = load_digits()
    x, y = digits.data.tolist(), torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, held = perm[300:], perm[:300]
    builder, params = ResMLPBuilder(), _params(width=32, blocks=2)
    pre = builder.fit_preprocessor(params, [x[i] for i in train.tolist()])
    inputs = pre.encode(x)
    torch.manual_seed(0)
    module = builder.build(params, pre, 10)
    loss = builder.loss(params, "ce")
    assert loss is not None
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        batch = train[torch.randint(len(train), (128,), generator=gen)]
        opt.zero_grad()
        loss(module(inputs[batch]), y[batch]).backward()
        opt.step()
    module.eval()
    with torch.inference_mode():
        accuracy = (module(inputs[held]).argmax(-1) == y[held]).float().mean().item()
    assert accuracy >= 0.9
