from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import InvalidSpec
from shared.schemas import DEFAULT_PATIENCE, TrainingConfig, TrainRequest
from shared.validation import resolve_train


def _resolve(**overrides: Any) -> Any:
    body = {"model_name": "m", "family": "mlp", "dataset": {"builtin": "iris"}} | overrides
    return resolve_train(TrainRequest.model_validate(body))


def _field_error(**overrides: Any) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        _resolve(**overrides)
    return info.value


def test_defaults_are_filled_in() -> None:
    spec = _resolve()
    assert spec.task == "classification"
    assert spec.params["hidden_sizes"] == [64, 64]
    assert spec.training.epochs == 10


def test_unknown_family_lists_the_known_ones() -> None:
    err = _field_error(family="resnet")
    assert err.field == "family"
    assert "mlp" in err.detail and "text_lstm" in err.detail


def test_unknown_dataset_lists_the_builtin_ones() -> None:
    err = _field_error(dataset={"builtin": "mnist"})
    assert err.field == "dataset.builtin"
    for name in ("iris", "wine", "breast_cancer", "digits", "diabetes", "sentiment"):
        assert name in err.detail


def test_a_family_cannot_train_on_the_wrong_kind_of_data() -> None:
    err = _field_error(family="text_lstm", dataset={"builtin": "iris"})
    assert err.field == "dataset.builtin"


def test_bad_params_name_the_parameter() -> None:
    assert _field_error(params={"activation": "gelu"}).field == "params.activation"
    assert _field_error(params={"hidden_sizes": [8, 0]}).field == "params.hidden_sizes[1]"
    assert _field_error(params={"layers": 3}).field == "params.layers"


def test_inline_rows_must_agree() -> None:
    inline = {"inputs": [[1, 2], [3]], "labels": [0, 1]}
    assert _field_error(dataset={"inline": inline}).field == "dataset.inline.inputs[1]"
    inline = {"inputs": [[1, 2], [3, 4]], "labels": [0]}
    assert _field_error(dataset={"inline": inline}).field == "dataset.inline.labels"
    inline = {"inputs": [[1, 2], [3, 4]], "labels": [1, 1]}
    assert "two classes" in _field_error(dataset={"inline": inline}).detail
    inline = {"inputs": ["a", "b"], "labels": [0, 1]}
    assert _field_error(dataset={"inline": inline}).field == "dataset.inline.inputs[0]"


def test_fractional_targets_mean_regression() -> None:
    inline = {"inputs": [[1.0], [2.0], [3.0]], "labels": [0.5, 1.5, 2.25]}
    assert _resolve(dataset={"inline": inline}).task == "regression"
    assert _resolve(dataset={"builtin": "diabetes"}).task == "regression"
    spec = _resolve(
        dataset={"inline": inline | {"labels": [1, 2, 3]}}, params={"task": "regression"}
    )
    assert spec.task == "regression"


def test_requests_reject_unknown_fields_and_bad_names() -> None:
    with pytest.raises(ValidationError):
        TrainRequest.model_validate(
            {"model_name": "m", "family": "mlp", "dataset": {"builtin": "iris"}, "extra": 1}
        )
    for name in ("../etc", "a/b", "", "-x", "x" * 129):
        with pytest.raises(ValidationError):
            TrainRequest.model_validate(
                {"model_name": name, "family": "mlp", "dataset": {"builtin": "iris"}}
            )
    with pytest.raises(ValidationError):
        TrainRequest.model_validate(
            {"model_name": "m", "family": "mlp", "dataset": {"builtin": "iris", "inline": None}}
            | {"dataset": {}}
        )


def test_an_unknown_parameter_near_a_known_one_says_which() -> None:
    err = _field_error(params={"hidden_size": [8]})
    assert err.field == "params.hidden_size"
    assert err.detail.endswith("did you mean `hidden_sizes`?")
    err = _field_error(family="text_lstm", dataset={"builtin": "sentiment"}, params={"maxlen": 9})
    assert err.detail.endswith("did you mean `max_len`?")
    assert "did you mean" not in _field_error(params={"layers": 3}).detail


def test_early_stopping_is_on_by_default_and_null_turns_it_off() -> None:
    assert TrainingConfig().early_stopping_patience == DEFAULT_PATIENCE
    assert (
        TrainingConfig.model_validate({"early_stopping_patience": None}).early_stopping_patience
        is None
    )
    assert TrainingConfig(early_stopping_patience=3).early_stopping_patience == 3
    # The default needs a validation split; an explicit one is kept as given.
    assert TrainingConfig(validation_fraction=0).early_stopping_patience is None
    no_split = TrainingConfig(validation_fraction=0, early_stopping_patience=4)
    assert no_split.early_stopping_patience == 4
    # A stored spec reads back as it was stored.
    for config in (TrainingConfig(), TrainingConfig(early_stopping_patience=None)):
        again = TrainingConfig.model_validate(config.model_dump(mode="json"))
        assert again.early_stopping_patience == config.early_stopping_patience
