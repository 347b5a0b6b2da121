"""What a checkpoint keeps of a training run, and putting it back: weights, optimizer,
random generators, history and early-stopping state, under the identity of the spec
that trained them, so that a resumed run goes on as if it had never stopped."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from shared.schemas import TrainSpec
from workers.checkpoint import Checkpointer, TrainState

if TYPE_CHECKING:
    from workers.training import Prepared


def identity(spec: TrainSpec) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by ``spec``."""
    return {"family": spec.family, "params": spec.params, "training": spec.training.model_dump()}


def usable(checkpointer: Checkpointer | None, spec: TrainSpec) -> TrainState | None:
    """The checkpoint to resume from: none when there is none, or when another spec wrote it."""
    state = checkpointer.load() if checkpointer is not None else None
    if state is None or state.meta.get("spec") != json.loads(json.dumps(identity(spec))):
        return None
    return state


def snapshot(epoch: int, run: Prepared, history: list[dict[str, Any]]) -> TrainState:
    """The run's state after ``epoch``, to be written as a checkpoint."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return TrainState(
        epoch=epoch,
        model=run.net.state_dict(),
        optimizer=run.opt.state_dict(),
        rng=torch.get_rng_state(),
        shuffle_rng=run.gen.get_state(),
        cuda_rng=list(cuda),
        history=history,
        best=run.stopper.weights,
        meta={
            "spec": identity(run.spec),
            "preprocessor": run.pre.to_json(),
            "target": run.target,
            "stopper": run.stopper.to_json(),
        },
    )


def restore(state: TrainState, run: Prepared) -> list[dict[str, Any]]:
    """Put a checkpoint's state back into a freshly prepared run; return its history."""
    run.net.load_state_dict(state.model)
    run.opt.load_state_dict(state.optimizer)
    torch.set_rng_state(state.rng)
    run.gen.set_state(state.shuffle_rng)
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)
    run.stopper.load(state.meta["stopper"], state.best)
    return list(state.history)
