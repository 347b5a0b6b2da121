"""Batch predictions end to end: through HTTP, with real worker processes. A model trained
by the workers scores a stored data set in many chunks; its output, fetched as Parquet and
as CSV, matches the model's per-row predictions in the data set's order; and a worker
killed with SIGKILL midway leaves a job that the next worker resumes from the chunk it
reached, with the same output as a run that was never interrupted."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from api.client import Client
from shared.db import model_registry
from shared.db.session import session_scope
from shared.jobstate import TERMINAL
from shared.schemas import TrainRequest
from shared.validation import resolve_train
from tests.fleet import Fleet, events, trained_model, wait
from tests.helpers import unique
from tests.shared.test_artifacts_s3 import S3, s3  # noqa: F401  the fixture
from tests.workers.test_batch_predict import (
    FEATURES,
    assert_matches,
    iris_table,
    predict_job,
    register,
    run,
    store_dataset,
)
from workers import inference
from workers.training import train

pytestmark = pytest.mark.slow

CLASSES = ["setosa", "versicolor", "virginica"]


def _submit(client: Any, model: str, dataset: str) -> dict[str, Any]:
    body = {"model_name": model, "dataset": {"name": dataset, "features": FEATURES, "id": "id"}}
    response = client.post("/v1/jobs/predict", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def _parquet(client: Any, job_id: str) -> pa.Table:
    response = client.get(f"/v1/jobs/{job_id}/output")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    return pq.read_table(io.BytesIO(response.content))


def _per_row(model: str, table: pa.Table) -> list[dict[str, Any]]:
    with session_scope() as s:
        version = model_registry.get_model_version(s, model, "latest")
    rows = zip(*(table.column(f).to_pylist() for f in FEATURES), strict=True)
    return [inference.predict(version, [list(row)])[0] for row in rows]


def test_a_data_set_scored_in_many_chunks_comes_back_as_parquet_and_csv(
    api_client: Any, fleet: Fleet
) -> None:
    fleet.worker(env={"TORCHQUEUE_PREDICT_CHUNK_ROWS": "64"})
    model = trained_model(api_client, "batch")
    table = iris_table(3000, seed=2)
    found = store_dataset(unique("flowers"), table, row_group_size=500)
    job = _submit(api_client, model, found.name)
    done = wait(api_client, job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"]["chunks_done"] == done["progress"]["chunks"] == 47

    out = _parquet(api_client, job["id"])
    assert out.column_names == ["id", "label", *(f"p_{c}" for c in CLASSES)]
    assert out.column("id").equals(table.column("id"))
    expected = _per_row(model, table)
    assert_matches(out, expected, CLASSES)
    output = done["result"]["output"]
    assert output["rows"] == 3000 and output["format"] == "parquet"

    response = api_client.get(f"/v1/jobs/{job['id']}/output", headers={"Accept": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    csv = pacsv.read_csv(io.BytesIO(response.content))
    assert csv.column_names == out.column_names
    assert csv.column("id").to_pylist() == table.column("id").to_pylist()
    assert_matches(csv, expected, CLASSES)

    inline = api_client.post(
        "/v1/jobs/predict", json={"model_name": model, "inputs": [[5.1, 3.5, 1.4, 0.2]]}
    ).json()
    wait(api_client, inline["id"])
    missing = api_client.get(f"/v1/jobs/{inline['id']}/output")
    assert missing.status_code == 404 and missing.json()["field"] == "job_id"
    refused = api_client.get(f"/v1/jobs/{job['id']}/output", headers={"Accept": "text/html"})
    assert refused.status_code == 422 and refused.json()["field"] == "Accept"


def _wait_chunks(client: Any, job_id: str, chunks: int) -> dict[str, Any]:
    def reached(job: dict[str, Any]) -> bool:
        return bool((job["progress"] or {}).get("chunks_done", 0) >= chunks)

    job = Client(http=client).wait(job_id, timeout=60, poll=0.02, until=reached)
    assert reached(job), f"job {job_id} never reached chunk {chunks}: it is {job['state']}"
    assert job["state"] not in TERMINAL, "the job ended before its worker could be killed"
    return job


def test_a_worker_killed_midway_is_resumed_from_its_last_chunk(
    api_client: Any, fleet: Fleet
) -> None:
    slow = {"TORCHQUEUE_PREDICT_CHUNK_ROWS": "8"}  # 4000 rows: 500 chunks
    first = fleet.worker(env=slow)
    model = trained_model(api_client, "resume")
    found = store_dataset(unique("flowers"), iris_table(4000, seed=3))
    whole = _submit(api_client, model, found.name)
    assert wait(api_client, whole["id"], timeout=300)["state"] == "succeeded"

    job = _submit(api_client, model, found.name)
    running = api_client.get(f"/v1/jobs/{job['id']}/output")
    assert running.status_code == 409 and running.json()["type"] == "conflict"
    reached = _wait_chunks(api_client, job["id"], 20)["progress"]["chunks_done"]
    fleet.kill9(first)
    fleet.start("reaper")
    fleet.worker(env=slow)
    done = wait(api_client, job["id"], timeout=300, attempts=2)

    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    resumed = [e for e in events(api_client, job["id"]) if e["kind"] == "resumed"]
    assert len(resumed) == 1
    chunk = int(resumed[0]["message"].split()[3])
    assert resumed[0]["message"] == f"resumed from chunk {chunk} of 500"
    assert chunk >= reached > 0
    assert _parquet(api_client, job["id"]).equals(_parquet(api_client, whole["id"]))
    same = wait(api_client, whole["id"])["result"]["output"]["sha256"]
    assert done["result"]["output"]["sha256"] == same
    print(f"\n[kill -9 mid batch prediction] chunks=500 seen_done={reached} resumed_from={chunk}")


def test_from_an_s3_store_parquet_is_a_presigned_url_and_csv_is_streamed(
    api_client: Any,
    s3: S3,  # noqa: F811  the fixture imported above
    setting: Callable[[str, str], None],
) -> None:
    """In this process, against moto's S3 server: parts, output and data set are objects."""
    setting("TORCHQUEUE_PREDICT_CHUNK_ROWS", "50")
    body = {"model_name": "iris", "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": 5}}  # fmt: skip
    version = register(train(resolve_train(TrainRequest.model_validate(body))), "mlp")
    table = iris_table(220, seed=4)
    found = store_dataset(unique("flowers"), table)
    job = run(predict_job(version, found, features=FEATURES, id="id"))
    assert job.state.value == "succeeded", job.error
    keys = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="fleet/artifacts/outputs/")
    assert [o["Key"] for o in keys["Contents"]] == [f"fleet/artifacts/outputs/{job.id}.parquet"]

    moved = api_client.get(f"/v1/jobs/{job.id}/output", follow_redirects=False)
    assert moved.status_code == 303
    fetched = httpx.get(moved.headers["location"], timeout=10)
    assert fetched.status_code == 200
    out = pq.read_table(io.BytesIO(fetched.content))
    assert out.column("id").equals(table.column("id"))
    assert_matches(out, _per_row_of(version, table), CLASSES)

    response = api_client.get(f"/v1/jobs/{job.id}/output", headers={"Accept": "text/csv"})
    assert response.status_code == 200, response.text
    assert pacsv.read_csv(io.BytesIO(response.content)).equals(
        pacsv.read_csv(io.BytesIO(_csv_of(out)))
    )


def _per_row_of(version: Any, table: pa.Table) -> list[dict[str, Any]]:
    rows = zip(*(table.column(f).to_pylist() for f in FEATURES), strict=True)
    return [inference.predict(version, [list(row)])[0] for row in rows]


def _csv_of(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    return bytes(sink.getvalue().to_pybytes())
