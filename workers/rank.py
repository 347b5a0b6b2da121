"""This process's place in a data-parallel run: its share of each epoch's rows, and the
two collective steps the training loop takes (did any rank stop; totals over ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def shard(self, perm: torch.Tensor) -> torch.Tensor:
        """Every rank the same number of rows (the remainder waits for the next epoch's
        shuffle), so that every rank runs the same number of steps."""
        if self.world == 1:
            return perm
        per_rank = len(perm) // self.world
        return perm[: per_rank * self.world][self.rank :: self.world]

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank says so (the leader hears of a cancel)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def total(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t
