"""Checkpoints: a run stopped after epoch k and resumed ends where an uninterrupted run
ends, without training epochs 1..k again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from shared.artifacts import LocalArtifactStore
from shared.schemas import TrainRequest, TrainSpec
from shared.validation import resolve_train
from workers.checkpoint import JOB_SHARE, Checkpointer
from workers.training import Hooks, Interrupted, train


def _spec(family: str, dataset: str, params: dict[str, Any], **training: Any) -> TrainSpec:
    body = {
        "model_name": "m",
        "family": family,
        "params": params,
        "dataset": {"builtin": dataset},
        "training": training,
    }
    return resolve_train(TrainRequest.model_validate(body))


CASES = [
    _spec(
        "mlp",
        "wine",
        {"dropout": 0.3},
        epochs=8,
        optimizer="sgd",
        momentum=0.9,
        learning_rate=0.05,
        seed=3,
    ),
    _spec("text_lstm", "sentiment", {}, epochs=5, learning_rate=0.01, seed=1),
    # Dropout in every encoder layer: the generator behind it resumes too.
    _spec(
        "text_transformer",
        "sentiment",
        {"layers": 1, "width": 16, "heads": 2, "feedforward": 32, "max_len": 24},
        epochs=4,
        learning_rate=0.003,
        seed=2,
    ),
    _spec("mlp", "iris", {}, epochs=40, learning_rate=0.05, early_stopping_patience=3),
    # The default patience, stopped after its best epoch (the first): the kept weights
    # come back from the checkpoint.
    _spec("mlp", "breast_cancer", {}, epochs=40, learning_rate=0.05),
    _spec("mlp", "iris", {}, epochs=12, learning_rate=0.05, early_stopping_patience=None),
    _spec(
        "image_cnn",
        "digits_images",
        {"width": 4, "hidden_size": 16, "dropout": 0.2},
        epochs=4,
        learning_rate=0.01,
        seed=2,
    ),
]


@pytest.mark.parametrize(
    "spec",
    CASES,
    ids=[
        "mlp-dropout-sgd",
        "text_lstm",
        "text_transformer",
        "early-stopping",
        "default-patience",
        "no-patience",
        "image_cnn",
    ],
)
def test_a_resumed_run_ends_like_an_uninterrupted_one(spec: TrainSpec, tmp_path: Path) -> None:
    whole = train(spec)
    stop_after = min(3, len(whole.history) - 1)

    trained_epochs: list[int] = []
    stop = {"now": False}

    def note(record: dict[str, Any]) -> None:
        trained_epochs.append(record["epoch"])
        stop["now"] = record["epoch"] >= stop_after

    checkpoints = Checkpointer(LocalArtifactStore(tmp_path), "checkpoints/job/checkpoint")
    hooks = Hooks(on_epoch=note, should_stop=lambda: stop["now"], checkpointer=checkpoints)
    with pytest.raises(Interrupted) as stopped:
        train(spec, hooks=hooks)
    assert stopped.value.epoch == stop_after + 1
    assert checkpoints.saved_epoch == stop_after

    resumed_from: list[int] = []
    resumed = train(spec, hooks=_resuming(checkpoints, trained_epochs, resumed_from))

    assert resumed_from == [stop_after]
    assert trained_epochs == [r["epoch"] for r in whole.history]  # none trained twice
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.stopped_early == whole.stopped_early
    for a, b in zip(
        resumed.module.state_dict().values(), whole.module.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    for key, value in whole.metrics.items():
        assert resumed.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_checkpoint_of_another_spec_is_not_resumed(tmp_path: Path) -> None:
    checkpoints = Checkpointer(LocalArtifactStore(tmp_path), "checkpoints/job/checkpoint")
    train(_spec("mlp", "iris", {}, epochs=2), hooks=Hooks(checkpointer=checkpoints))
    resumed: list[int] = []
    other = _spec("mlp", "iris", {"hidden_sizes": [8]}, epochs=3)
    trained = train(other, hooks=Hooks(checkpointer=checkpoints, on_resume=resumed.append))
    assert resumed == []
    assert len(trained.history) == 3


def _resuming(checkpoints: Checkpointer, seen: list[int], resumed_from: list[int]) -> Hooks:
    """Hooks that note each epoch trained and the epoch a run resumed from."""
    return Hooks(
        on_epoch=lambda r: seen.append(r["epoch"]),
        on_resume=resumed_from.append,
        checkpointer=checkpoints,
    )


def _stop_after(epoch: int, checkpoints: Checkpointer, seen: list[int]) -> Hooks:
    """Hooks that note each epoch and stop the run in the epoch after ``epoch``."""
    stop = {"now": False}

    def note(record: dict[str, Any]) -> None:
        seen.append(record["epoch"])
        stop["now"] = record["epoch"] >= epoch

    return Hooks(on_epoch=note, should_stop=lambda: stop["now"], checkpointer=checkpoints)


def test_a_job_resumes_from_its_last_checkpoint_when_short_epochs_were_not_all_saved(
    tmp_path: Path,
) -> None:
    """Under a job's policy (checkpoints take at most JOB_SHARE of the time), epochs of
    milliseconds are not each checkpointed: a stopped run resumes from the last one
    written, trains the epochs after it again, and ends like an uninterrupted run."""
    spec = _spec(
        "mlp", "iris", {}, epochs=30, learning_rate=0.05, seed=4, early_stopping_patience=None
    )
    whole = train(spec)
    store = LocalArtifactStore(tmp_path)
    checkpoints = Checkpointer(store, "checkpoints/job/checkpoint", max_share=JOB_SHARE)
    seen: list[int] = []
    with pytest.raises(Interrupted):
        train(spec, hooks=_stop_after(20, checkpoints, seen))
    saved = checkpoints.saved_epoch
    assert 1 <= saved <= 20

    again = Checkpointer(store, "checkpoints/job/checkpoint", max_share=JOB_SHARE)
    resumed_from: list[int] = []
    resumed = train(spec, hooks=_resuming(again, seen, resumed_from))

    assert resumed_from == [saved]
    assert seen == list(range(1, 21)) + list(range(saved + 1, 31))
    assert [r["epoch"] for r in resumed.history] == list(range(1, 31))
    for key, value in whole.metrics.items():
        assert resumed.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_an_interval_of_zero_checkpoints_every_epoch_whatever_the_share(tmp_path: Path) -> None:
    spec = _spec("mlp", "iris", {}, epochs=30, learning_rate=0.05)
    checkpoints = Checkpointer(
        LocalArtifactStore(tmp_path), "checkpoints/job/checkpoint", 0, max_share=JOB_SHARE
    )
    with pytest.raises(Interrupted):
        train(spec, hooks=_stop_after(12, checkpoints, []))
    assert checkpoints.saved_epoch == 12
