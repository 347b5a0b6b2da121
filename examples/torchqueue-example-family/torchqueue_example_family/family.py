"""The torch-free half of ``resmlp``: its parameters and how many weights they make.

A worker reports this to the API (the JSON Schema of ``ResMLPParams``), and checks the
count against TORCHQUEUE_MAX_MODEL_PARAMS before it builds anything, so it must not import
torch, and ``_count`` must match ``model.ResMLP`` exactly."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.families import Family, InputShape


class ResMLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(64, ge=1, le=4096, description="the width of every hidden layer")
    blocks: int = Field(2, ge=1, le=32, description="residual blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="inside each residual block")
    label_smoothing: float = Field(
        0.1, ge=0.0, lt=1.0, description="of the cross-entropy loss the model trains on"
    )


def _count(params: Mapping[str, Any], shape: InputShape, n_outputs: int) -> int:
    """The input layer; per block a layer norm and two linear layers; the final layer
    norm and the head. A linear layer has a weight matrix and a bias, a layer norm a
    weight and a bias per feature."""
    features, width = math.prod(shape), int(params["width"])
    block = 2 * width + 2 * (width * width + width)
    head = 2 * width + width * n_outputs + n_outputs
    return features * width + width + int(params["blocks"]) * block + head


FAMILY = Family(
    name="resmlp",
    description="tabular classification: a residual MLP (pre-norm blocks), trained on "
    "label-smoothed cross entropy",
    input_kind="features",
    params=ResMLPParams,
    tasks=("classification",),
    count_parameters=_count,
    builder="torchqueue_example_family.model:ResMLPBuilder",
)
