"""Model families on the worker side: how each turns raw inputs into tensors and which
``nn.Module`` it builds. Names and parameter schemas are shared with the API through
``shared.families``; a request can name only a family registered here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .mlp import MLPFamily
from .text_lstm import TextLSTMFamily


class Preprocessor(Protocol):
    def encode(self, inputs: Sequence[Any]) -> torch.Tensor: ...
    def to_json(self) -> dict[str, Any]: ...


class FamilyBuilder(Protocol):
    name: str
    # Two classes as one logit with a sigmoid (BCE) rather than two with a softmax (CE).
    binary_as_one_logit: bool

    def fit_preprocessor(self, params: dict[str, Any], inputs: Sequence[Any]) -> Preprocessor: ...
    def load_preprocessor(self, data: dict[str, Any]) -> Preprocessor: ...
    def input_schema(self, pre: Any) -> dict[str, Any]: ...
    def build(self, params: dict[str, Any], pre: Any, n_outputs: int) -> nn.Module: ...


BUILDERS: dict[str, FamilyBuilder] = {f.name: f for f in (TextLSTMFamily(), MLPFamily())}
