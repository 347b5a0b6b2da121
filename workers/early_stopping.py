"""Early stopping on the validation loss, keeping the best weights seen."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation loss; keep the best weights."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.stopped = False

    def should_stop(self, record: dict[str, Any], module: nn.Module) -> bool:
        if not self.patience:
            return False
        if self.best is None or record["val_loss"] < self.best[0]:
            weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.best = (record["val_loss"], record["epoch"], weights)
        elif record["epoch"] - self.best[1] >= self.patience:
            self.stopped = True
        return self.stopped

    def to_json(self) -> dict[str, Any]:
        best = None if self.best is None else [self.best[0], self.best[1]]
        return {"best": best, "stopped": self.stopped}

    def load(self, data: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> None:
        self.stopped = bool(data["stopped"])
        if data["best"] is not None and weights is not None:
            self.best = (float(data["best"][0]), int(data["best"][1]), weights)

    def restore(self, module: nn.Module) -> int | None:
        """Put the best weights back; return their epoch (None when not tracking)."""
        if self.best is None:
            return None
        module.load_state_dict(self.best[2])
        return self.best[1]
