"""A typed tensor a model cannot take fails its job as bad data (``LoadedModel.encode``),
by the same rule as the API's check (``shared.validation.check_tensor_shape``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from shared.errors import BadData
from workers import tensors
from workers.modelio import LoadedModel
from workers.preprocess import Standardizer


def _model(input_schema: dict[str, Any]) -> LoadedModel:
    manifest = {"input_schema": input_schema, "task": "regression", "target": {}}
    pre = Standardizer([0.0, 0.0], [1.0, 1.0])
    return LoadedModel(manifest, nn.Linear(2, 1), pre)


def test_a_fitting_tensor_is_encoded() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    encoded = _model({"kind": "features", "n_features": 2}).encode(tensors.encode(x))
    assert encoded.shape == (3, 2)


@pytest.mark.parametrize(
    ("schema", "shape", "words"),
    [
        ({"kind": "features", "n_features": 3}, [2, 2], "the model takes 3"),
        ({"kind": "text"}, [2, 2], "texts"),
        ({"kind": "features", "n_features": 2}, [4], "[rows, features]"),
    ],
)
def test_a_tensor_that_does_not_fit_is_bad_data(
    schema: dict[str, Any], shape: list[int], words: str
) -> None:
    wire = tensors.encode(torch.zeros(2, 2)) | {"shape": shape}
    with pytest.raises(BadData) as info:
        _model(schema).encode(wire)
    assert words in info.value.detail
