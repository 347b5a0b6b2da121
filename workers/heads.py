"""The head of a task: the loss a model trains on and how its outputs are scored."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Head:
    """Loss and scoring for one task: ``bce`` (two classes, one logit), ``ce`` or ``mse``."""

    def __init__(self, kind: str):
        self.kind = kind
        losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
            "bce": nn.functional.binary_cross_entropy_with_logits,
            "ce": nn.functional.cross_entropy,
            "mse": nn.functional.mse_loss,
        }
        self.loss_fn = losses[kind]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind in ("bce", "mse"):
            return self.loss_fn(out.squeeze(-1).float(), y)
        return self.loss_fn(out.float(), y)

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
