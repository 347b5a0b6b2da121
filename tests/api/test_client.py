"""The Python client: its errors, and a failed job's error in one line."""

from __future__ import annotations

import json

import httpx
import pytest

from api.client import ApiError, Client, job_error


def test_a_failed_jobs_error_in_one_line() -> None:
    failed = {"error": {"type": "nan_loss", "detail": "the loss diverged"}}
    assert job_error(failed) == "nan_loss: the loss diverged"
    # A job that failed before errors had one shape.
    old = {"error": {"type": "worker_lost", "message": "cpu@host stopped renewing its lease"}}
    assert job_error(old) == "worker_lost: cpu@host stopped renewing its lease"
    assert job_error({"error": None}) is None


def test_predict_submits_a_prediction_job_and_waits_as_long_as_asked() -> None:
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if json.loads(request.content)["model_name"] == "gone":
            body = {"type": "not_found", "detail": "no model 'gone'", "field": "model_name"}
            return httpx.Response(404, json=body)
        return httpx.Response(200, json={"id": "j", "state": "succeeded", "result": {}})

    http = httpx.Client(base_url="http://tq", transport=httpx.MockTransport(api), timeout=30)
    with Client(http=http) as tq:
        assert tq.predict("iris", [[5.1, 3.5, 1.4, 0.2]], wait=20)["state"] == "succeeded"
        with pytest.raises(ApiError) as raised:
            tq.predict("gone", [[1.0]])
    sent = json.loads(seen[0].content)
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/jobs/predict")
    assert sent == {"model_name": "iris", "version": "latest", "inputs": [[5.1, 3.5, 1.4, 0.2]],
                    "wait": 20}  # fmt: skip
    assert seen[0].extensions["timeout"]["read"] == 50  # its own 30 s, and the wait
    assert "wait" not in json.loads(seen[1].content)
    error = raised.value
    assert (error.status, error.type, error.field) == (404, "not_found", "model_name")
