"""Real (small) models trained on the CPU, without Celery."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from shared.errors import NonFiniteLoss
from shared.schemas import DEFAULT_PATIENCE, TrainRequest
from shared.validation import resolve_train
from workers.training import Trained, prepare, train, validation


def _train(family: str, dataset: dict[str, Any], params: Any = None, **training: Any) -> Trained:
    body = {
        "model_name": "m",
        "family": family,
        "params": params or {},
        "dataset": dataset,
        "training": training,
    }
    return train(resolve_train(TrainRequest.model_validate(body)))


def test_the_seed_example_trains_and_records_every_epoch() -> None:
    texts = ["这是一个文本分类的例子。", "我非常喜欢这个课程。", "这是一个关于机器学习的文章。"]
    trained = _train("text_lstm", {"inline": {"inputs": texts, "labels": [0, 1, 0]}}, epochs=5)
    assert [r["epoch"] for r in trained.history] == [1, 2, 3, 4, 5]
    assert all("train_loss" in r and "train_accuracy" in r for r in trained.history)


def _val_loss_of(trained: Trained) -> float:
    """The validation loss of the weights ``trained`` ended with, measured again."""
    run = prepare(trained.spec, torch.device("cpu"))
    run.net = trained.module
    return validation(run)["val_loss"]


def _best(trained: Trained) -> int:
    """The epoch of the lowest validation loss in the history."""
    return min(trained.history, key=lambda r: r["val_loss"])["epoch"]


@pytest.mark.slow
def test_the_quick_start_text_model_ends_with_its_best_epoch() -> None:
    # README's `torchqueue train reviews --family text_lstm --builtin sentiment --epochs 20
    # --lr 0.01`: it overfits after a few epochs; early stopping is on by default.
    trained = _train("text_lstm", {"builtin": "sentiment"}, epochs=20, learning_rate=0.01)
    assert all("val_loss" in r and "val_accuracy" in r for r in trained.history)
    assert trained.best_epoch == _best(trained)
    assert trained.metrics["epoch"] == trained.best_epoch
    assert trained.metrics["val_accuracy"] >= 0.85
    assert _val_loss_of(trained) == pytest.approx(trained.metrics["val_loss"], rel=1e-4)
    if trained.stopped_early:
        assert len(trained.history) == trained.best_epoch + DEFAULT_PATIENCE
    else:
        assert len(trained.history) == 20


def _noisy(n: int = 200) -> dict[str, Any]:
    """Rows whose label follows the first feature, one in ten flipped: an MLP learns it
    for a few epochs, then learns the noise and its validation loss rises."""
    rng = random.Random(1)
    rows = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(n)]
    return {
        "inline": {
            "inputs": rows,
            "labels": [int((r[0] > 0) != (rng.random() < 0.1)) for r in rows],
        }
    }


def test_best_epoch_is_the_lowest_validation_loss_also_without_early_stopping() -> None:
    trained = _train("mlp", _noisy(), epochs=30, learning_rate=0.01, early_stopping_patience=None)
    assert len(trained.history) == 30 and not trained.stopped_early
    assert trained.best_epoch == _best(trained) < 30
    # Without early stopping the model keeps its last weights, and says so.
    assert trained.metrics["epoch"] == 30
    assert _val_loss_of(trained) == pytest.approx(trained.history[-1]["val_loss"], rel=1e-4)


def test_early_stopping_is_on_by_default_and_keeps_the_best_weights() -> None:
    trained = _train("mlp", _noisy(), epochs=30, learning_rate=0.01)
    assert trained.spec.training.early_stopping_patience == DEFAULT_PATIENCE
    assert trained.stopped_early
    assert trained.best_epoch == _best(trained)
    assert len(trained.history) == trained.best_epoch + DEFAULT_PATIENCE
    assert trained.metrics["epoch"] == trained.best_epoch
    assert _val_loss_of(trained) == pytest.approx(trained.metrics["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_iris_reaches_90_percent_validation_accuracy() -> None:
    trained = _train("mlp", {"builtin": "iris"}, epochs=60, learning_rate=0.01)
    assert trained.metrics["val_accuracy"] >= 0.9


@pytest.mark.slow
def test_diabetes_regression_beats_predicting_the_mean() -> None:
    trained = _train(
        "mlp",
        {"builtin": "diabetes"},
        {"hidden_sizes": [32]},
        epochs=200,
        learning_rate=0.01,
        weight_decay=1e-3,
        early_stopping_patience=20,
    )
    metrics = trained.metrics
    assert metrics["val_mse"] is not None and metrics["val_baseline_mse"] is not None
    assert metrics["val_mse"] < metrics["val_baseline_mse"]


def test_early_stopping_keeps_the_best_epoch() -> None:
    trained = _train(
        "mlp", {"builtin": "wine"}, epochs=300, learning_rate=0.05, early_stopping_patience=3
    )
    assert trained.stopped_early
    assert len(trained.history) == trained.best_epoch + 3
    best = min(r["val_loss"] for r in trained.history)
    assert trained.metrics["val_loss"] == best


def test_the_same_seed_gives_the_same_model() -> None:
    first = _train("mlp", {"builtin": "iris"}, epochs=3, seed=7)
    second = _train("mlp", {"builtin": "iris"}, epochs=3, seed=7)
    assert first.history[-1]["train_loss"] == second.history[-1]["train_loss"]


def test_a_diverging_loss_fails_with_a_reason() -> None:
    rng = random.Random(0)
    rows = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(64)]
    inline = {"inputs": rows, "labels": [r[0] * 3.5 + 0.25 for r in rows]}
    with pytest.raises(NonFiniteLoss, match="lower learning rate"):
        _train(
            "mlp",
            {"inline": inline},
            {"task": "regression"},
            epochs=20,
            learning_rate=10.0,
            optimizer="sgd",
            momentum=0.9,
        )


def test_a_regression_reports_its_errors_in_the_units_of_its_target() -> None:
    trained = _train("mlp", {"builtin": "diabetes"}, {"hidden_sizes": [16]}, epochs=2)
    first = trained.history[0]
    # Diabetes targets run from 25 to 346: squared errors in their units are in the
    # thousands, as the baseline's are, not near 1 as on the standardized scale.
    assert first["val_baseline_mse"] > 1000
    assert first["train_mse"] > 0.1 * first["val_baseline_mse"]
    assert first["val_mse"] > 0.1 * first["val_baseline_mse"]


def test_every_epoch_reports_training_and_validation_scores_between_0_and_1() -> None:
    trained = _train("mlp", {"builtin": "digits"}, epochs=3, batch_size=50)
    for record in trained.history:
        assert 0 <= record["train_accuracy"] <= 1
        assert 0 <= record["val_accuracy"] <= 1
        assert record["train_loss"] > 0 and record["val_loss"] > 0
    # Digits is easy: three epochs of an MLP get most of the validation rows right.
    assert trained.history[-1]["val_accuracy"] > 0.8
