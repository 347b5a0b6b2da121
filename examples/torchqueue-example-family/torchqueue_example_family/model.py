"""The torch half of ``resmlp``: standardized feature rows through residual blocks, a
label-smoothed cross-entropy loss and a top-2 accuracy metric. Only workers import it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.families.mlp import Standardized
from workers.preprocess import Standardizer

from .family import FAMILY

# (outputs, targets) -> a tensor: a loss, or a metric summed over the rows.
TensorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Block(nn.Module):
    """Pre-norm residual block: the input plus a two-layer MLP of its normalized self."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


def resmlp(n_features: int, width: int, blocks: int, dropout: float, n_outputs: int) -> nn.Module:
    """Input layer, ``blocks`` residual blocks, a final layer norm and the linear head."""
    body = [Block(width, dropout) for _ in range(blocks)]
    return nn.Sequential(
        nn.Linear(n_features, width), *body, nn.LayerNorm(width), nn.Linear(width, n_outputs)
    )


def top2_hits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows whose target is among the two highest outputs, summed (every row, with fewer
    than three classes)."""
    if outputs.shape[-1] < 3:
        return torch.tensor(float(len(targets)), device=outputs.device)
    top = outputs.topk(2, dim=-1).indices
    return (top == targets.long().unsqueeze(-1)).any(dim=-1).sum().float()


class ResMLPBuilder(Standardized):
    """Feature rows standardized as ``mlp``'s are (``Standardized``), then the model."""

    name = "resmlp"
    family = FAMILY

    def build(self, params: dict[str, Any], pre: Standardizer, n_outputs: int) -> nn.Module:
        width, blocks = int(params["width"]), int(params["blocks"])
        return resmlp(pre.n_features, width, blocks, float(params["dropout"]), n_outputs)

    def loss(self, params: dict[str, Any], head: str) -> TensorFn | None:
        """Label-smoothed cross entropy for classes; None (the standard loss) otherwise."""
        if head != "ce":
            return None
        smoothing = float(params["label_smoothing"])

        def smoothed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(outputs.float(), targets, label_smoothing=smoothing)

        return smoothed

    def metrics(self, params: dict[str, Any], head: str) -> dict[str, TensorFn]:
        """``top2_accuracy`` beside the standard accuracy, for classes."""
        return {"top2_accuracy": top2_hits} if head == "ce" else {}
