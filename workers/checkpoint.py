"""Training checkpoints: one safetensors file per job, holding the model, the optimizer,
the random number generators, the early-stopping state and, in its JSON metadata, the
epoch, the history and the preprocessing. Written atomically (a local store writes a
temporary file, then renames it; S3 shows an object whole or not at all), so a crash
leaves the previous checkpoint whole. Nothing is pickled."""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from shared.artifacts import ArtifactStore
from shared.errors import ModelLoadError

FORMAT = 1
# A job with no checkpoint interval of its own checkpoints as often as keeps the writes
# under this share of its time: every epoch unless epochs last less than a hundred writes,
# so that a crash costs at most one epoch or a hundred writes' time.
JOB_SHARE = 0.01


@dataclass
class TrainState:
    """What a resumed run needs to carry on exactly where the last one stopped."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor
    shuffle_rng: torch.Tensor
    history: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    best: dict[str, torch.Tensor] | None = None
    cuda_rng: list[torch.Tensor] = field(default_factory=list)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{name}"] = value
            else:
                plain.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["plain"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def encode(state: TrainState) -> bytes:
    tensors = {f"model/{k}": v for k, v in state.model.items()}
    optim_tensors, optim_meta = _flatten_optimizer(state.optimizer)
    tensors |= optim_tensors
    tensors["rng/cpu"] = state.rng
    tensors["rng/shuffle"] = state.shuffle_rng
    tensors |= {f"rng/cuda/{i}": t for i, t in enumerate(state.cuda_rng)}
    if state.best is not None:
        tensors |= {f"best/{k}": v for k, v in state.best.items()}
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "history": state.history,
        "optimizer": optim_meta,
        "has_best": state.best is not None,
        **state.meta,
    }
    cpu = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return save_safetensors(cpu, metadata={"torchqueue": json.dumps(meta)})


def _metadata(data: bytes) -> dict[str, Any]:
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    meta: dict[str, Any] = json.loads(header["__metadata__"]["torchqueue"])
    return meta


def decode(data: bytes) -> TrainState:
    try:
        meta = _metadata(data)
        tensors = load_safetensors(data)
    except (ValueError, KeyError, struct.error) as exc:
        raise ModelLoadError(f"the checkpoint cannot be read: {exc}") from None

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    cuda = group("rng/cuda/")
    return TrainState(
        epoch=int(meta["epoch"]),
        model=group("model/"),
        optimizer=_unflatten_optimizer(group("optim/"), meta["optimizer"]),
        rng=tensors["rng/cpu"],
        shuffle_rng=tensors["rng/shuffle"],
        history=list(meta["history"]),
        meta=meta,
        best=group("best/") if meta.get("has_best") else None,
        cuda_rng=[cuda[str(i)] for i in range(len(cuda))],
    )


def checkpoint_key(job_id: str) -> str:
    """Where a job's checkpoint lives in the artifact store."""
    return f"checkpoints/{job_id}/checkpoint.safetensors"


class Checkpointer:
    """Where one job's checkpoint lives, and when the next one is due: at every epoch end;
    or at the first epoch end ``every_seconds`` after the last one (0: every epoch); or,
    with ``max_share``, at the first epoch end at least ``1 / max_share`` times the last
    write's duration after it, so that writing takes at most that share of the time
    (every epoch when epochs are long beside a write; the first epoch always)."""

    def __init__(
        self,
        store: ArtifactStore,
        key: str,
        every_seconds: float | None = None,
        max_share: float | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.every_seconds = every_seconds
        self.max_share = max_share
        self.last = time.monotonic()
        self.cost = 0.0  # seconds the last checkpoint took to encode and write
        self.saved_epoch = 0

    def due(self, final: bool = False) -> bool:
        if final:
            return True
        since = time.monotonic() - self.last
        if self.every_seconds is not None:  # 0: every epoch
            return since >= self.every_seconds
        if self.max_share:
            return since * self.max_share >= self.cost
        return True

    def save(self, state: TrainState) -> None:
        started = time.monotonic()
        self.store.put_bytes(self.key, encode(state))
        self.last = time.monotonic()
        self.cost = self.last - started
        self.saved_epoch = state.epoch

    def load(self) -> TrainState | None:
        if not self.store.exists(self.key):
            return None
        return decode(self.store.get_bytes(self.key))

    def delete(self) -> None:
        self.store.delete(self.key)
