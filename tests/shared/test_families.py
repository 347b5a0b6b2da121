"""The torch-free half of each model family: tasks, outputs, parameter counts."""

from __future__ import annotations

import pytest

from shared.errors import InvalidSpec
from shared.families import FAMILIES


def test_text_lstm_classifies_only_and_mlp_does_both() -> None:
    assert FAMILIES["text_lstm"].tasks == ("classification",)
    assert set(FAMILIES["mlp"].tasks) == {"classification", "regression"}


def test_a_task_the_family_cannot_do_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as info:
        FAMILIES["text_lstm"].check_task("regression", "dataset.inline.labels")
    assert info.value.field == "dataset.inline.labels"
    assert "text_lstm" in info.value.detail and "regression" in info.value.detail
    FAMILIES["mlp"].check_task("regression", "params.task")


def test_auto_is_regression_for_fractional_labels_else_classification() -> None:
    for family in FAMILIES.values():
        assert family.decide_task({}, [0.5, 1.0]) == "regression"
        assert family.decide_task({}, [0, 1.0, "a"]) == "classification"
    mlp = FAMILIES["mlp"]
    assert mlp.decide_task({"task": "auto"}, [0.5]) == "regression"
    assert mlp.decide_task({"task": "regression"}, [0, 1]) == "regression"
    assert mlp.decide_task({"task": "classification"}, [0.5, 1.5]) == "classification"


@pytest.mark.parametrize(
    ("name", "task", "n_classes", "outputs"),
    [
        ("text_lstm", "classification", 2, 1),
        ("text_lstm", "classification", 3, 3),
        ("mlp", "classification", 2, 2),
        ("mlp", "classification", 5, 5),
        ("mlp", "regression", 1, 1),
    ],
)
def test_outputs_follow_the_task_and_the_binary_rule(
    name: str, task: str, n_classes: int, outputs: int
) -> None:
    assert FAMILIES[name].n_outputs(task, n_classes) == outputs  # type: ignore[arg-type]


def test_mlp_parameter_count_by_hand() -> None:
    params = FAMILIES["mlp"].params.model_validate({"hidden_sizes": [3]}).model_dump()
    # 4 -> 3: 12 weights + 3 biases; 3 -> 2: 6 weights + 2 biases.
    assert FAMILIES["mlp"].parameter_count(params, (4,), 2) == 23


def test_image_cnn_parameter_count_by_hand() -> None:
    family = FAMILIES["image_cnn"]
    params = family.params.model_validate(
        {"blocks": 2, "width": 4, "kernel_size": 3, "hidden_size": 5}
    ).model_dump()
    # 1 -> 4: 36 + 4; 4 -> 8: 288 + 8; 8×8 pooled twice is 2×2: 32 -> 5 -> 3.
    assert family.parameter_count(params, (1, 8, 8), 3) == 40 + 296 + 165 + 18


def test_image_cnn_blocks_must_fit_the_images() -> None:
    family = FAMILIES["image_cnn"]
    params = family.params.model_validate({"blocks": 4}).model_dump()
    with pytest.raises(InvalidSpec) as info:
        family.parameter_count(params, (1, 8, 8), 10)
    assert info.value.field == "params.blocks"
    assert "at most 3 blocks" in info.value.detail
    assert family.parameter_count(params, (3, 16, 20), 10) > 0


def test_image_cnn_kernels_are_odd() -> None:
    with pytest.raises(ValueError, match="odd"):
        FAMILIES["image_cnn"].params.model_validate({"kernel_size": 4})
