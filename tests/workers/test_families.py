"""Both halves of each model family: one registry, and counts that match the real module."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from shared.families import FAMILIES
from workers.families import BUILDERS


def test_every_family_has_both_halves_under_one_name() -> None:
    # The built-ins, and the example plugin that the test environment installs.
    assert set(BUILDERS) == {*FAMILIES, "resmlp"}
    for name, builder in BUILDERS.items():
        assert builder.name == name == builder.family.name
        if name in FAMILIES:
            assert builder.family is FAMILIES[name]


def _inputs(name: str) -> Any:
    if name == "mlp":
        return [[float(i), float(i * i), 1.0 - i, 0.5] for i in range(8)]
    if name == "image_cnn":
        return torch.arange(6 * 2 * 12 * 10, dtype=torch.float32).reshape(6, 2, 12, 10)
    # More distinct words than the vocabulary holds: the embedding gets all its rows.
    words = [f"w{i}" for i in range(30)]
    return [" ".join(words[i : i + 6]) for i in range(0, 30, 3)]


PARAMS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden_sizes": [7, 5], "task": "classification"},
    "text_lstm": {"num_words": 12},
    "text_transformer": {"num_words": 12, "width": 8, "heads": 2, "feedforward": 6},
    "image_cnn": {"blocks": 3, "width": 3, "kernel_size": 5, "hidden_size": 7, "dropout": 0.1},
}


def _shape(schema: dict[str, Any]) -> tuple[int, ...]:
    if schema["kind"] == "image":
        return tuple(schema["shape"])
    return (schema["n_features"],) if schema["kind"] == "features" else ()


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_parameter_count_is_that_of_the_built_module(name: str, n_classes: int) -> None:
    family, builder = FAMILIES[name], BUILDERS[name]
    params = family.params.model_validate(PARAMS[name]).model_dump()
    inputs = _inputs(name)
    pre = builder.fit_preprocessor(params, inputs)
    n_outputs = family.n_outputs("classification", n_classes)
    module = builder.build(params, pre, n_outputs)
    shape = _shape(builder.input_schema(pre))
    built = sum(p.numel() for p in module.parameters())
    assert family.parameter_count(params, shape, n_outputs) == built


def test_mlp_regression_count_is_that_of_the_built_module() -> None:
    family, builder = FAMILIES["mlp"], BUILDERS["mlp"]
    params = family.params.model_validate({"hidden_sizes": [9]}).model_dump()
    inputs = _inputs("mlp")
    module = builder.build(params, builder.fit_preprocessor(params, inputs), 1)
    n_outputs = family.n_outputs("regression", 1)
    built = sum(p.numel() for p in module.parameters())
    assert family.parameter_count(params, (len(inputs[0]),), n_outputs) == built
