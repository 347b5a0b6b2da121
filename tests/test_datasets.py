"""Training on a stored data set, end to end: a real worker trains on an uploaded CSV, the
model version records its lineage, predicts as well as one trained on the same rows
inline, and the data set version it came from cannot be deleted under it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_wine

from shared.artifacts import open_store
from tests.helpers import unique, wait_job

TRAINING = {"epochs": 15, "batch_size": 16, "learning_rate": 0.01, "seed": 3}


def _wine() -> tuple[list[list[float]], list[int], bytes]:
    bunch = load_wine()
    rows, labels = bunch.data.tolist(), bunch.target.tolist()
    columns = {f"f{i}": [r[i] for r in rows] for i in range(len(rows[0]))}
    out = io.BytesIO()
    pacsv.write_csv(pa.table({**columns, "kind": labels}), out)
    return rows, labels, out.getvalue()


def _train(client: Any, dataset: dict[str, Any]) -> dict[str, Any]:
    body = {"model_name": unique("wine"), "family": "mlp", "dataset": dataset, "training": TRAINING}
    made = client.post("/v1/jobs/train", json=body)
    assert made.status_code == 201, made.text
    job = wait_job(client, made.json()["id"])
    assert job["state"] == "succeeded", job
    return job


@pytest.mark.slow
def test_a_model_trained_on_a_data_set_matches_one_trained_inline(
    api_client: Any, worker: Path
) -> None:
    rows, labels, csv = _wine()
    name = unique("wine")
    uploaded = api_client.post(
        "/v1/datasets", params={"name": name, "label": "kind"}, content=csv,
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["value_counts"]["kind"] == {"0": 59, "1": 71, "2": 48}

    stored = _train(api_client, {"name": name, "label": "kind"})
    inline = _train(api_client, {"inline": {"inputs": rows, "labels": labels}})
    assert stored["result"]["metrics"]["val_accuracy"] == pytest.approx(
        inline["result"]["metrics"]["val_accuracy"], abs=0.03
    )
    assert stored["result"]["metrics"]["val_accuracy"] > 0.85

    version = api_client.get(
        f"/v1/models/{stored['model_name']}/versions/{stored['model_version']}"
    ).json()
    sha256 = uploaded.json()["sha256"]
    assert version["dataset"] == {"name": name, "version": 1, "sha256": sha256}
    assert version["input_schema"]["columns"] == [f"f{i}" for i in range(13)]

    # Scoring the table reads the columns the model was trained on, unnamed.
    scored = api_client.post(
        "/v1/jobs/predict",
        json={"model_name": stored["model_name"], "dataset": {"name": name}},
    )
    assert scored.status_code == 201, scored.text
    assert wait_job(api_client, scored.json()["id"])["state"] == "succeeded"
    output = api_client.get(f"/v1/jobs/{scored.json()['id']}/output")
    assert output.status_code == 200
    table = pq.read_table(io.BytesIO(output.content))
    assert table.num_rows == len(rows)
    assert sum(a == b for a, b in zip(table.column("label").to_pylist(), labels, strict=True)) > 150

    # Same inputs, same answers: the model trained on the data set against the inline one.
    for job in (stored, inline):
        answer = api_client.post(
            f"/v1/models/{job['model_name']}/predict", json={"inputs": rows[:40]}
        )
        assert answer.status_code == 200, answer.text
        right = sum(
            o["label"] == y for o, y in zip(answer.json()["outputs"], labels[:40], strict=True)
        )
        assert right >= 34

    # The version that trained a registered model stays; an unused one goes, with its file.
    refused = api_client.delete(f"/v1/datasets/{name}/versions/1")
    assert refused.status_code == 409, refused.text
    assert f"{stored['model_name']}:{stored['model_version']}" in refused.json()["detail"]
    second = api_client.post(
        "/v1/datasets", params={"name": name}, content=csv, headers={"Content-Type": "text/csv"}
    ).json()
    store = open_store()
    path = store.local_path(store.key_of(second["uri"]))
    assert path is not None and path.is_file()
    assert api_client.delete(f"/v1/datasets/{name}/versions/2").status_code == 204
    assert not path.is_file()
    assert api_client.get(f"/v1/datasets/{name}/versions/2").status_code == 404


@pytest.mark.slow
def test_a_text_model_trains_on_a_column_of_texts(api_client: Any, worker: Path) -> None:
    texts = ["a good film", "a bad film", "great acting", "awful plot"] * 25
    labels = ["pos", "neg", "pos", "neg"] * 25
    out = io.BytesIO()
    pacsv.write_csv(pa.table({"review": texts, "id": list(range(100)), "mood": labels}), out)
    name = unique("reviews")
    made = api_client.post(
        "/v1/datasets", params={"name": name}, content=out.getvalue(),
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    body = {
        "model_name": unique("reviews"),
        "family": "text_lstm",
        "dataset": {"name": name, "label": "mood"},
        "training": {"epochs": 8, "learning_rate": 0.05},
    }
    job = api_client.post("/v1/jobs/train", json=body)
    assert job.status_code == 201, job.text
    done = wait_job(api_client, job.json()["id"])
    assert done["state"] == "succeeded", done
    answer = api_client.post(
        f"/v1/models/{body['model_name']}/predict", json={"inputs": ["a good film"]}
    ).json()
    assert answer["outputs"][0]["label"] == "pos"
