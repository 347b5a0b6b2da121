"""``mlp``: standardized feature rows through a multilayer perceptron, for classes or
for a numeric target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from shared.families import FAMILIES
from workers.preprocess import Standardizer, feature_tensor

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class Standardized:
    """What families of feature rows share: each feature standardized by the training
    rows' mean and spread, rows of numbers as input. A plugin's builder may take it too."""

    def fit_preprocessor(self, params: dict[str, Any], inputs: Sequence[Any]) -> Standardizer:
        return Standardizer().fit(feature_tensor(inputs))

    def load_preprocessor(self, data: dict[str, Any]) -> Standardizer:
        return Standardizer.from_json(data)

    def input_schema(self, pre: Standardizer) -> dict[str, Any]:
        return {"kind": "features", "n_features": pre.n_features}


class MLPFamily(Standardized):
    name = "mlp"
    family = FAMILIES[name]

    def build(self, params: dict[str, Any], pre: Standardizer, n_outputs: int) -> nn.Module:
        layers: list[nn.Module] = []
        width = pre.n_features
        for size in params["hidden_sizes"]:
            layers += [nn.Linear(width, size), ACTIVATIONS[params["activation"]]()]
            if params["dropout"] > 0:
                layers.append(nn.Dropout(params["dropout"]))
            width = size
        layers.append(nn.Linear(width, n_outputs))
        return nn.Sequential(*layers)
