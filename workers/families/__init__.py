"""Model families on the worker side: how each turns raw inputs into tensors and which
``nn.Module`` it builds. ``BUILDERS`` is keyed by the names of ``shared.families.FAMILIES``,
and each builder holds its family's torch-free half (parameters, tasks, outputs) as
``family``, looked up there by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from shared.families import Family

from .image_cnn import ImageCNNFamily
from .mlp import MLPFamily
from .text_lstm import TextLSTMFamily
from .text_transformer import TextTransformerFamily


class Preprocessor(Protocol):
    def encode(self, inputs: Sequence[Any]) -> torch.Tensor: ...
    def to_json(self) -> dict[str, Any]: ...


class FamilyBuilder(Protocol):
    name: str
    family: Family

    def fit_preprocessor(self, params: dict[str, Any], inputs: Sequence[Any]) -> Preprocessor: ...
    def load_preprocessor(self, data: dict[str, Any]) -> Preprocessor: ...
    def input_schema(self, pre: Any) -> dict[str, Any]: ...
    def build(self, params: dict[str, Any], pre: Any, n_outputs: int) -> nn.Module: ...


BUILDERS: dict[str, FamilyBuilder] = {
    f.name: f for f in (TextLSTMFamily(), TextTransformerFamily(), MLPFamily(), ImageCNNFamily())
}
