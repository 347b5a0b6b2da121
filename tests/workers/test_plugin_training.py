"""A plugin family in the training loop, without Celery: its own loss and metrics are
used, and its own rules (the parameters, the size limit) are held on the worker, where
its code is, with the field named."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torchqueue_example_family.family import FAMILY

from shared.errors import InvalidSpec
from shared.families import DescribedFamily
from shared.schemas import TrainRequest, TrainSpec
from shared.validation import resolve_train
from workers.jobs import error_of
from workers.training import prepare, train

BODY = {
    "model_name": "plugin",
    "family": "resmlp",
    "params": {"width": 16, "blocks": 1, "label_smoothing": 0.2},
    "dataset": {"builtin": "iris"},
    "training": {"epochs": 3, "seed": 0},
}


def _spec(**params: object) -> TrainSpec:
    body = BODY | {"params": BODY["params"] | params}  # type: ignore[operator]
    # As the API resolves it: by the family's report, not its code.
    return resolve_train(
        TrainRequest.model_validate(body), family=DescribedFamily(FAMILY.describe())
    )


def test_the_familys_loss_and_metrics_are_the_loops() -> None:
    spec = _spec()
    run = prepare(spec, torch.device("cpu"))
    out, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    smoothed = torch.nn.functional.cross_entropy(out, y, label_smoothing=0.2)
    assert torch.allclose(run.head.loss(out, y), smoothed)
    trained = train(spec)
    assert all("val_top2_accuracy" in record for record in trained.history)
    assert trained.metrics["val_top2_accuracy"] >= trained.metrics["val_accuracy"]


def test_the_size_limit_is_held_on_the_worker(setting: Callable[[str, str], None]) -> None:
    spec = _spec(width=64)  # the API cannot count a plugin's model: it accepts it
    setting("TORCHQUEUE_MAX_MODEL_PARAMS", "1000")
    with pytest.raises(InvalidSpec) as err:
        prepare(spec, torch.device("cpu"))
    assert err.value.field == "params"
    assert "parameters; the limit is 1,000" in err.value.detail
    refused = error_of(err.value)
    assert refused.to_dict() == {
        "type": "invalid_spec",
        "detail": err.value.detail,
        "field": "params",
    }


def test_the_familys_own_rules_are_held_on_the_worker() -> None:
    spec = _spec()
    spec.params["blocks"] = 0  # what a schema from another version of the plugin let by
    with pytest.raises(InvalidSpec) as err:
        prepare(spec, torch.device("cpu"))
    assert err.value.field == "params.blocks"


def test_a_task_the_family_cannot_do_is_refused_from_its_report() -> None:
    body = BODY | {"dataset": {"builtin": "diabetes"}}
    with pytest.raises(InvalidSpec) as err:
        resolve_train(TrainRequest.model_validate(body), family=DescribedFamily(FAMILY.describe()))
    assert err.value.field == "dataset.builtin"
    assert "resmlp does classification only, not regression" in err.value.detail
