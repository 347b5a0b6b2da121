"""Whole-request checks that depend on the family, and the one check of a typed tensor."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import InvalidSpec
from shared.schemas import MAX_PREDICT_ROWS, MAX_TENSOR_VALUES, Tensor, TrainRequest
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


IMAGES = {"kind": "image", "shape": [1, 8, 8]}


def _tensor(shape: list[int], dtype: str = "float32") -> dict[str, Any]:
    size = math.prod(shape) * {"float16": 2, "float32": 4, "float64": 8}[dtype]
    return {"dtype": dtype, "shape": shape, "data": base64.b64encode(bytes(size)).decode()}


def test_a_typed_tensor_is_rows_by_features_or_rows_of_images() -> None:
    assert Tensor.model_validate(_tensor([2, 3])).shape == [2, 3]
    assert Tensor.model_validate(_tensor([5, 1, 8, 8])).shape == [5, 1, 8, 8]
    for bad in ([2, 3, 4], [2, 1, 8, 8, 1], [2, 0, 8, 8]):
        with pytest.raises(ValidationError) as info:
            Tensor.model_validate(_tensor(bad) | {"shape": bad})
        assert info.value.errors()[0]["loc"][0] == "shape"
    # Each side within the limit, the whole over it: refused before its bytes are read.
    huge = [MAX_PREDICT_ROWS, 3, 10_000, 10_000]
    with pytest.raises(ValidationError, match=f"at most {MAX_TENSOR_VALUES:,} values"):
        Tensor.model_validate({"dtype": "float32", "shape": huge, "data": ""})


def test_an_image_model_takes_tensors_of_its_own_image_shape() -> None:
    assert check_tensor_shape([3, 1, 8, 8], IMAGES) == [3, 1, 8, 8]
    for wrong in ([3, 64], [3, 1, 8, 9], [3, 3, 8, 8], [3, 8, 8]):
        with pytest.raises(InvalidSpec) as info:
            check_tensor_shape(wrong, IMAGES)
        assert info.value.field == "inputs.shape"
        assert "[rows, 1, 8, 8]" in info.value.detail
    with pytest.raises(InvalidSpec) as info:
        check_tensor_shape([3, 1, 8, 8], FEATURES)  # a numeric model keeps [rows, features]
    assert info.value.field == "inputs.shape"
    assert "[rows, 4]" in info.value.detail


def test_an_image_model_takes_nested_lists_of_its_shape() -> None:
    image = [[[0.0] * 8 for _ in range(8)]]
    check_inputs([image, image], IMAGES)
    for i, bad in enumerate(([[[0.0] * 8 for _ in range(7)]], [[0.0] * 64], "a text")):
        with pytest.raises(InvalidSpec) as info:
            check_inputs([image, bad], IMAGES)
        assert info.value.field == "inputs[1]", i
    nan = [[[float("nan")] * 8 for _ in range(8)]]
    with pytest.raises(InvalidSpec, match="finite"):
        check_inputs([nan], IMAGES)


def test_image_rows_parse_as_images_and_feature_rows_as_rows() -> None:
    from shared.schemas import ServeRequest

    image = [[[1.0, 2.0], [3.0, 4.0]]]
    assert ServeRequest.model_validate({"inputs": [image]}).inputs == [image]
    assert ServeRequest.model_validate({"inputs": [[1.0, 2.0]]}).inputs == [[1.0, 2.0]]
