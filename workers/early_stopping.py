"""The best epoch (lowest validation loss) and early stopping on it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EarlyStopping:
    """Track the epoch of the lowest validation loss. With ``patience``, also keep that
    epoch's weights, stop after ``patience`` epochs without a lower loss, and put the kept
    weights back at the end; without it, train on and keep the last weights."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best: tuple[float, int] | None = None  # (validation loss, epoch)
        self.weights: dict[str, torch.Tensor] | None = None
        self.stopped = False

    def should_stop(self, record: dict[str, Any], module: nn.Module) -> bool:
        loss = record.get("val_loss")
        if loss is None:  # no validation split: nothing to go by
            return False
        if self.best is None or loss < self.best[0]:
            self.best = (loss, record["epoch"])
            if self.patience:
                self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif self.patience and record["epoch"] - self.best[1] >= self.patience:
            self.stopped = True
        return self.stopped

    @property
    def best_epoch(self) -> int | None:
        return None if self.best is None else self.best[1]

    def to_json(self) -> dict[str, Any]:
        best = None if self.best is None else [self.best[0], self.best[1]]
        return {"best": best, "stopped": self.stopped}

    def load(self, data: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> None:
        self.stopped = bool(data["stopped"])
        if data["best"] is not None:
            self.best = (float(data["best"][0]), int(data["best"][1]))
        self.weights = weights if self.patience else None

    def restore(self, module: nn.Module) -> int | None:
        """Put the kept weights back; return their epoch (None when none are kept)."""
        if self.weights is None or self.best is None:
            return None
        module.load_state_dict(self.weights)
        return self.best[1]
