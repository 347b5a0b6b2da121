"""Whole-request checks that depend on the family, and the one check of a typed tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.errors import InvalidSpec
from shared.schemas import MAX_PREDICT_ROWS, Tensor, TrainRequest
from shared.validation import check_inputs, check_tensor_shape, resolve_train

TEXTS = {"inputs": ["good film", "bad film", "fine film"], "labels": [1, 0, 1]}
FEATURES = {"kind": "features", "n_features": 4}


def _resolve(family: str, inline: dict[str, Any], **params: Any) -> Any:
    body = {"model_name": "m", "family": family, "params": params, "dataset": {"inline": inline}}
    return resolve_train(TrainRequest.model_validate(body))


def test_text_lstm_refuses_regression_naming_the_labels() -> None:
    with pytest.raises(InvalidSpec) as info:
        _resolve("text_lstm", TEXTS | {"labels": [0.5, 1.5, 2.25]})
    assert info.value.field == "dataset.inline.labels"
    assert "text_lstm" in info.value.detail


def test_mlp_asked_for_regression_gets_it() -> None:
    inline = {"inputs": [[1.0], [2.0], [3.0]], "labels": [1, 2, 3]}
    spec = _resolve("mlp", inline, task="regression")
    assert spec.task == spec.params["task"] == "regression"


def test_the_size_limit_counts_one_logit_for_a_binary_text_lstm(
    setting: Callable[[str, str], None],
) -> None:
    # Defaults: 1000 x 16 embedding, a 16 -> 32 LSTM, a 32 -> 1 head.
    one_logit = 1000 * 16 + 4 * (16 * 32 + 32 * 32 + 2 * 32) + 32 + 1
    setting("TORCHQUEUE_MAX_MODEL_PARAMS", str(one_logit))
    assert _resolve("text_lstm", TEXTS).task == "classification"
    setting("TORCHQUEUE_MAX_MODEL_PARAMS", str(one_logit - 1))
    with pytest.raises(InvalidSpec) as info:
        _resolve("text_lstm", TEXTS)
    assert info.value.field == "params"


@pytest.mark.parametrize(
    "shape",
    [None, "3,4", [4], [1, 4, 1], [0, 4], [2, 0], ["2", 4], [2.0, 4], [True, 4],
     [MAX_PREDICT_ROWS + 1, 4]],
)  # fmt: skip
def test_a_shape_that_is_not_rows_by_features_is_refused(shape: Any) -> None:
    with pytest.raises(InvalidSpec) as info:
        check_tensor_shape(shape, FEATURES)
    assert info.value.field == "inputs.shape"


def test_a_tensor_must_suit_the_model_kind_and_width() -> None:
    assert check_tensor_shape([3, 4], FEATURES) == [3, 4]
    with pytest.raises(InvalidSpec) as info:
        check_tensor_shape([3, 4], {"kind": "text"})
    assert info.value.field == "inputs"
    with pytest.raises(InvalidSpec) as info:
        check_tensor_shape([3, 5], FEATURES)
    assert info.value.field == "inputs.shape"
    assert "the model takes 4" in info.value.detail


def test_check_inputs_holds_a_typed_tensor_to_the_same_rule() -> None:
    tensor = Tensor.model_construct(dtype="float32", shape=[2, 3], data="")
    with pytest.raises(InvalidSpec) as info:
        check_inputs(tensor, FEATURES)
    assert info.value.field == "inputs.shape"
    with pytest.raises(InvalidSpec) as info:
        check_inputs(tensor, {"kind": "text"})
    assert info.value.field == "inputs"
