"""A sweep's space is checked against its base job before anything runs: 422 naming the
dimension that cannot run, and no sweep or job made."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import unique

BASE = {"family": "mlp", "dataset": {"builtin": "iris"}}


def _body(space: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"base": {**BASE, "model_name": unique("space")}, "space": space, "trials": 4} | extra


@pytest.mark.parametrize(
    ("space", "extra", "field", "words"),
    [
        ({"params.dropout": {"type": "uniform", "low": 0.0, "high": 1.5}}, {},
         "space.params.dropout", "params.dropout = 1.5"),
        ({"params.nosuch": {"type": "uniform", "low": 0.0, "high": 1.0}}, {},
         "space.params.nosuch", "mlp has no parameter 'nosuch'"),
        ({"params.activation": {"type": "choice", "values": ["relu", "swish"]}}, {},
         "space.params.activation", '"swish"'),
        ({"training.seed": {"type": "int", "low": 0, "high": 3}}, {},
         "space.training.seed", "not seed"),
        ({"training.batch_size": {"type": "int", "low": 0, "high": 64}}, {},
         "space.training.batch_size", "training.batch_size = 0"),
        ({"training.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 0.1}},
         {"sampler": "grid"}, "space.training.learning_rate", "grid sampler"),
        ({"params.activation": {"type": "choice", "values": ["relu", "tanh"]}},
         {"sampler": "grid"}, "trials", "at most 2 trials"),
    ],
)  # fmt: skip
def test_a_space_that_cannot_run_is_refused_naming_the_dimension(
    api_client: Any, space: dict[str, Any], extra: dict[str, Any], field: str, words: str
) -> None:
    before = api_client.get("/v1/sweeps", params={"limit": 500}).json()["items"]
    refused = api_client.post("/v1/sweeps", json=_body(space, **extra))
    assert refused.status_code == 422, refused.text
    error = refused.json()
    assert error["field"] == field
    assert words in error["detail"]
    assert "Traceback" not in refused.text
    after = api_client.get("/v1/sweeps", params={"limit": 500}).json()["items"]
    assert len(after) == len(before)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_body({"params.dropout": {"type": "uniform", "low": 0.5, "high": 0.1}}),
         "space.params.dropout.uniform"),
        (_body({"training.learning_rate": {"type": "log_uniform", "low": 0, "high": 1}}),
         "space.training.learning_rate.log_uniform"),
        (_body({"bogus": {"type": "uniform", "low": 0, "high": 1}}), "space.bogus"),
        (_body({"params.dropout": {"type": "uniform", "low": 0, "high": 0.5}}, trials=0),
         "trials"),
        (_body({"params.dropout": {"type": "uniform", "low": 0, "high": 0.5}}, metric="acc"),
         "metric"),
        (_body({"params.dropout": {"type": "uniform", "low": 0, "high": 0.5}}, promote="Prod!"),
         "promote"),
        (_body({"params.dropout": {"type": "uniform", "low": 0, "high": 0.5}}, promote="latest"),
         "promote"),
    ],
)  # fmt: skip
def test_a_malformed_sweep_is_refused_with_its_field(
    api_client: Any, body: dict[str, Any], field: str
) -> None:
    refused = api_client.post("/v1/sweeps", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"].startswith(field), refused.json()


def test_the_direction_follows_the_metric_unless_given(api_client: Any) -> None:
    space = {"params.dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}
    loss = api_client.post("/v1/sweeps", json=_body(space)).json()
    accuracy = api_client.post("/v1/sweeps", json=_body(space, metric="val_accuracy")).json()
    assert loss["spec"]["request"]["direction"] == "minimize"
    assert accuracy["spec"]["request"]["direction"] == "maximize"
    for sweep in (loss, accuracy):
        assert api_client.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 200
