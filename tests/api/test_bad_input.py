"""Every bad request gets a 4xx naming what is wrong; never a 500, never a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import unique

TRAIN = {"model_name": "m", "family": "mlp", "dataset": {"builtin": "iris"}}


def _check(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert response.status_code == status, body
    assert "Traceback" not in response.text
    assert body["type"] and body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**TRAIN, "model_name": "../../etc"}, "model_name"),
        ({**TRAIN, "family": 3}, "family"),
        ({k: v for k, v in TRAIN.items() if k != "dataset"}, "dataset"),
        ({**TRAIN, "dataset": {}}, "dataset"),
        ({**TRAIN, "dataset": {"builtin": "iris", "url": "http://x"}}, "dataset.url"),
        ({**TRAIN, "training": {"epochs": 0}}, "training.epochs"),
        ({**TRAIN, "training": {"optimizer": "lbfgs"}}, "training.optimizer"),
        ({**TRAIN, "params": {"hidden_sizes": "big"}}, "params.hidden_sizes"),
        ({**TRAIN, "surprise": True}, "surprise"),
        (
            {**TRAIN, "dataset": {"inline": {"inputs": [[1, 2], [1]], "labels": [0, 1]}}},
            "dataset.inline.inputs[1]",
        ),
        (
            {**TRAIN, "dataset": {"inline": {"inputs": [[1, 2]], "labels": [0, 1]}}},
            "dataset.inline.labels",
        ),
        ({**TRAIN, "family": "text_lstm"}, "dataset.builtin"),
    ],
)
def test_a_malformed_training_spec_names_the_field(
    api_client: Any, body: dict[str, Any], field: str
) -> None:
    _check(api_client.post("/v1/jobs/train", json=body), 422, field)


def test_an_unknown_family_lists_the_known_ones(api_client: Any) -> None:
    body = _check(api_client.post("/v1/jobs/train", json={**TRAIN, "family": "gpt"}), 422, "family")
    assert "mlp" in body["detail"] and "text_lstm" in body["detail"]


def test_an_unknown_dataset_lists_the_builtin_ones(api_client: Any) -> None:
    response = api_client.post("/v1/jobs/train", json={**TRAIN, "dataset": {"builtin": "mnist"}})
    body = _check(response, 422, "dataset.builtin")
    assert "iris" in body["detail"] and "sentiment" in body["detail"]


def test_a_body_that_is_not_json_is_422(api_client: Any) -> None:
    response = api_client.post(
        "/v1/jobs/train", content=b"{nope", headers={"content-type": "application/json"}
    )
    _check(response, 422)


def test_unknown_jobs_models_and_versions_are_404(api_client: Any) -> None:
    _check(api_client.get("/v1/jobs/0000"), 404)
    _check(api_client.get(f"/v1/models/{unique('none')}"), 404)
    _check(api_client.get(f"/v1/models/{unique('none')}/versions/1"), 404)
    _check(api_client.get("/v1/no/such/route"), 404)
    body = {"model_name": unique("none"), "inputs": ["hello"]}
    _check(api_client.post("/v1/jobs/predict", json=body), 404, "model_name")


def test_bad_query_parameters_are_422(api_client: Any) -> None:
    _check(api_client.get("/v1/jobs", params={"state": "sleeping"}), 422, "state")
    _check(api_client.get("/v1/jobs", params={"limit": 0}), 422, "limit")
    _check(api_client.get("/v1/jobs", params={"model_name": "not a name"}), 422, "model_name")
    # A number, latest or an alias (which starts with a letter).
    _check(api_client.get("/v1/models/x/versions/1st"), 422, "version")


def test_bad_prediction_requests_are_422(api_client: Any) -> None:
    _check(
        api_client.post("/v1/jobs/predict", json={"model_name": "m", "inputs": []}), 422, "inputs"
    )
    body = {"model_name": "m", "inputs": ["a"], "version": 0}
    _check(api_client.post("/v1/jobs/predict", json=body), 422, "version")
    body = {"model_name": "m", "inputs": ["a"], "wait": -1}
    _check(api_client.post("/v1/jobs/predict", json=body), 422, "wait")


@pytest.mark.parametrize(
    ("body", "field", "meant"),
    [
        ({**TRAIN, "training": {"epoch": 5}}, "training.epoch", "epochs"),
        ({**TRAIN, "trainig": {}}, "trainig", "training"),
        ({**TRAIN, "dataset": {"builtins": "iris"}}, "dataset.builtins", "builtin"),
        ({**TRAIN, "params": {"hidden_size": [8]}}, "params.hidden_size", "hidden_sizes"),
    ],
)
def test_an_unknown_field_near_a_known_one_says_which(
    api_client: Any, body: dict[str, Any], field: str, meant: str
) -> None:
    answer = _check(api_client.post("/v1/jobs/train", json=body), 422, field)
    assert field in answer["detail"]
    assert answer["detail"].endswith(f"did you mean `{meant}`?")


def test_an_unknown_field_near_nothing_suggests_nothing(api_client: Any) -> None:
    body = {**TRAIN, "training": {"colour": "blue"}}
    answer = _check(api_client.post("/v1/jobs/train", json=body), 422, "training.colour")
    assert "did you mean" not in answer["detail"]
    body = {"inputs": {"dtype": "float32", "shape": [1, 1], "data": "AAAAAA==", "dtyp": 1}}
    answer = _check(api_client.post("/v1/models/m/predict", json=body), 422, "inputs.dtyp")
    assert answer["detail"].endswith("did you mean `dtype`?")


def test_a_body_over_the_limit_is_413_in_the_usual_shape(
    api_client: Any, setting: Callable[[str, str], None]
) -> None:
    """Refused by the middleware before the app reads it, with the error tree's shape:
    whether its Content-Length says so, or it grows past the limit as it streams in."""
    setting("TORCHQUEUE_MAX_REQUEST_MB", "1")
    rows = [[1.0] * 300 for _ in range(2000)]  # 3 MB
    big = {**TRAIN, "dataset": {"inline": {"inputs": rows, "labels": [0, 1] * 1000}}}

    def streamed() -> Iterator[bytes]:  # no Content-Length
        yield b'{"model_name": "m", "inputs": ['
        for _ in range(200_000):
            yield b'"abcdefgh", '
        yield b'"z"]}'

    for response in (
        api_client.post("/v1/jobs/train", json=big),
        api_client.post(
            "/v1/jobs/predict", content=streamed(), headers={"content-type": "application/json"}
        ),
    ):
        assert response.headers["content-type"] == "application/json"
        assert _check(response, 413) == {
            "type": "too_large",
            "detail": "the request body is over the limit of 1 MB",
        }


def test_a_nul_anywhere_in_the_url_is_422_not_a_database_error(api_client: Any) -> None:
    for url in ("/v1/models/a%00b", "/v1/jobs?kind=train&model_name=%00", "/v1/datasets/x%00"):
        _check(api_client.get(url), 422, "url")
