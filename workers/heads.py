"""The head of a task: the loss a model trains on and how its outputs are scored."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOSSES: dict[str, LossFn] = {
    "bce": nn.functional.binary_cross_entropy_with_logits,
    "ce": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
}


class Head:
    """Loss and scoring for one task: ``bce`` (two classes, one logit), ``ce`` or ``mse``.
    A family may bring its own ``loss`` and ``metrics`` (each summed over the rows); they
    get the outputs as the standard loss does: ``[rows]`` for bce and mse, ``[rows,
    classes]`` for ce, in float32."""

    def __init__(
        self, kind: str, loss: LossFn | None = None, metrics: dict[str, LossFn] | None = None
    ):
        self.kind = kind
        self.loss_fn = loss or _LOSSES[kind]
        self.metrics = metrics or {}

    def _shaped(self, out: torch.Tensor) -> torch.Tensor:
        return out.squeeze(-1).float() if self.kind in ("bce", "mse") else out.float()

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self._shaped(out), y)

    def extra(self, out: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The family's own metrics over these rows, each summed over them."""
        shaped = self._shaped(out)
        return [fn(shaped, y).detach().float().reshape(()) for fn in self.metrics.values()]

    def predicted(self, out: torch.Tensor) -> torch.Tensor:
        if self.kind == "bce":
            return (out.squeeze(-1) > 0).long()
        if self.kind == "ce":
            return out.argmax(dim=-1)
        return out.squeeze(-1).float()

    def score(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed over the rows: correct answers, or squared errors (standardized)."""
        pred = self.predicted(out)
        if self.kind == "mse":
            return ((pred - y) ** 2).sum()
        return (pred == y.long()).sum().float()
