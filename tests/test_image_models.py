"""Image models end to end, through HTTP with a real worker: ``image_cnn`` trained on the
built-in digits as 1×8×8 images answers typed tensors [rows, 1, 8, 8] and nested lists,
refuses a tensor of another shape naming ``inputs.shape`` (alone, when a batch holds it
beside a good request); and one trained on an uploaded npz of images scores that data set
in a batch prediction job."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
import torch
from sklearn.datasets import load_digits

from shared.config import get_settings
from shared.enqueue import send_batch
from shared.jobstate import now
from shared.notify import decode_reply
from shared.schemas import ServeBatch, ServeItem, ServeRequest
from tests.helpers import unique, wait_job
from workers import tensors

pytestmark = pytest.mark.slow

PARAMS = {"width": 8, "hidden_size": 32}
TRAINING = {"epochs": 12, "learning_rate": 0.005, "seed": 0}


def _train(client: Any, dataset: dict[str, Any], **training: Any) -> dict[str, Any]:
    body = {"model_name": unique("digits"), "family": "image_cnn", "params": PARAMS,
            "dataset": dataset, "training": TRAINING | training}  # fmt: skip
    made = client.post("/v1/jobs/train", json=body)
    assert made.status_code == 201, made.text
    job = wait_job(client, made.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return job


def _images(n: int) -> tuple[torch.Tensor, list[int]]:
    bunch = load_digits()
    return torch.from_numpy(bunch.data[:n]).float().reshape(n, 1, 8, 8), bunch.target[:n].tolist()


def _predict(client: Any, model: str, inputs: Any) -> Any:
    return client.post(f"/v1/models/{model}/predict", json={"inputs": inputs, "timeout": 60})


def test_an_image_model_trains_on_the_digits_and_answers_image_tensors(
    api_client: Any, worker: Path
) -> None:
    job = _train(api_client, {"builtin": "digits_images"})
    assert job["result"]["metrics"]["val_accuracy"] >= 0.95
    model = job["model_name"]
    version = api_client.get(f"/v1/models/{model}/versions/latest").json()
    assert version["input_schema"] == {"kind": "image", "shape": [1, 8, 8]}

    images, labels = _images(40)
    answer = _predict(api_client, model, tensors.encode(images))
    assert answer.status_code == 200, answer.text
    got = [o["label"] for o in answer.json()["outputs"]]
    assert sum(a == b for a, b in zip(got, labels, strict=True)) >= 36
    as_lists = _predict(api_client, model, images[:3].tolist())
    assert as_lists.status_code == 200, as_lists.text
    assert [o["label"] for o in as_lists.json()["outputs"]] == got[:3]

    for shape in ([40, 1, 4, 16], [40, 64]):
        wrong = _predict(api_client, model, tensors.encode(images.reshape(shape)))
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["field"] == "inputs.shape"
        assert "[rows, 1, 8, 8]" in wrong.json()["detail"]
    bad_list = _predict(api_client, model, [[[0.0] * 8] * 7])
    assert bad_list.status_code == 422 and bad_list.json()["field"] == "inputs[0]"

    # A job with image inputs answers as the sync route does.
    made = api_client.post(
        "/v1/jobs/predict", json={"model_name": model, "inputs": tensors.encode(images[:3])}
    )
    assert made.status_code == 201, made.text
    done = wait_job(api_client, made.json()["id"])
    assert [o["label"] for o in done["result"]["outputs"]] == got[:3]
    refused = api_client.post(
        "/v1/jobs/predict",
        json={"model_name": model, "inputs": tensors.encode(images.reshape(40, 1, 16, 4))},
    )
    assert refused.status_code == 422 and refused.json()["field"] == "inputs.shape"

    _a_batch_of_two_shapes_answers_each_request(model, images)


def _a_batch_of_two_shapes_answers_each_request(model: str, images: torch.Tensor) -> None:
    """One serve message holding a good request and one of another shape, as the API's
    batcher could send them: the good one is answered, the other refused alone."""
    channel = f"test-replies-{uuid.uuid4().hex}"
    items = [
        ServeItem.model_construct(
            id=str(uuid.uuid4()),
            inputs=ServeRequest.model_validate({"inputs": tensors.encode(x)}).inputs,
            outputs="json",
            by=None,
            at=now(),
        )
        for x in (images[:2], images[:3].reshape(3, 1, 4, 16))
    ]
    client = redis.Redis.from_url(get_settings().broker_url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=5)  # the subscription's confirmation
    batch = ServeBatch(model=model, version="latest", queue="predict.default", reply=channel,
                       items=items)  # fmt: skip
    send_batch(batch, uuid.uuid4().hex)
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=60)
    pubsub.close()
    assert message is not None, "no answer within 60 s"
    answers = {job_id: (status, json.loads(body)) for job_id, status, body in
               decode_reply(message["data"])}  # fmt: skip
    assert answers[items[0].id][0] == 200
    assert len(answers[items[0].id][1]["outputs"]) == 2
    assert answers[items[1].id][0] == 422
    assert answers[items[1].id][1]["field"] == "inputs.shape"


def test_an_image_model_trains_on_an_uploaded_npz_and_scores_it(
    api_client: Any, worker: Path
) -> None:
    images, labels = _images(600)
    out = io.BytesIO()
    np.savez(out, x=images.numpy(), y=np.asarray(labels), id=np.arange(600))
    name = unique("digit-images")
    uploaded = api_client.post(
        "/v1/datasets", params={"name": name, "label": "y"}, content=out.getvalue(),
        headers={"Content-Type": "application/x-npz"},
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    assert {c["name"]: c["shape"] for c in uploaded.json()["columns"]}["x"] == [1, 8, 8]

    # Two arrays besides the label: the images must be named.
    body = {"model_name": unique("digits"), "family": "image_cnn",
            "dataset": {"name": name, "label": "y"}}  # fmt: skip
    refused = api_client.post("/v1/jobs/train", json=body)
    assert refused.status_code == 422 and refused.json()["field"] == "dataset.features"
    job = _train(api_client, {"name": name, "label": "y", "features": ["x"]}, epochs=20)
    assert job["result"]["metrics"]["val_accuracy"] >= 0.9
    model = job["model_name"]

    scored = api_client.post(
        "/v1/jobs/predict", json={"model_name": model, "dataset": {"name": name, "id": "id"}}
    )
    assert scored.status_code == 201, scored.text
    done = wait_job(api_client, scored.json()["id"])
    assert done["state"] == "succeeded", done["error"]
    output = api_client.get(f"/v1/jobs/{scored.json()['id']}/output")
    table = pq.read_table(io.BytesIO(output.content))
    assert table.column("id").to_pylist() == list(range(600))
    right = sum(a == b for a, b in zip(table.column("label").to_pylist(), labels, strict=True))
    assert right >= 540


def test_inline_images_train_and_answer(api_client: Any, worker: Path) -> None:
    images, labels = _images(200)
    job = _train(api_client, {"inline": {"inputs": images.tolist(), "labels": labels}}, epochs=3)
    version = api_client.get(f"/v1/models/{job['model_name']}/versions/latest").json()
    assert version["input_schema"]["shape"] == [1, 8, 8]
    answer = _predict(api_client, job["model_name"], tensors.encode(images[:5]))
    assert answer.status_code == 200, answer.text
    mixed = api_client.post(
        "/v1/jobs/train",
        json={"model_name": unique("digits"), "family": "image_cnn",
              "dataset": {"inline": {"inputs": [images[0].tolist(), images[1, :, :4].tolist()],
                                     "labels": [0, 1]}}},
    )  # fmt: skip
    assert mixed.status_code == 422, mixed.text
    assert mixed.json()["field"] == "dataset.inline.inputs[1]"
