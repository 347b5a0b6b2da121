"""Batch predictions over a stored data set, run by ``workers.jobs`` in this process without
Celery: the output matches the model's per-row predictions (``workers.inference.predict``),
in the data set's order, whatever the chunk size and the file's row groups; an id column
comes through; a job resumes from the chunks an earlier attempt wrote; bad columns fail
the job naming the field."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_diabetes, load_iris

from shared.artifacts import open_store
from shared.db import datasets, job_reads, jobs, model_registry
from shared.db.session import session_scope
from shared.jobstate import JobKind, JobState
from shared.schemas import (
    DatasetFile,
    DatasetVersionOut,
    JobOut,
    ModelVersionOut,
    PredictSpec,
    RunPredictDataset,
    TrainRequest,
)
from shared.validation import resolve_train
from tests.helpers import unique
from workers import batch_predict, dataset_files, inference, modelio
from workers import jobs as worker_jobs
from workers.training import train

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def store_dataset(
    name: str, table: pa.Table, row_group_size: int | None = None
) -> DatasetVersionOut:
    """A stored Parquet data set version, as the upload route records one."""
    store = open_store()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        sha256, size = dataset_files.sha256_of(path), path.stat().st_size
        uri = store.put_file(f"datasets/{name}/{unique('v')}.parquet", path)
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    with session_scope() as s:
        return datasets.create_version(
            s, name=name, source="upload", format="parquet", uri=uri, sha256=sha256,
            size=size, rows=table.num_rows, columns=columns, created_by=None, admin=True,
        )  # fmt: skip


def iris_table(rows: int, seed: int = 0) -> pa.Table:
    """``rows`` iris-like rows (the flowers, jittered), an id, and a label column."""
    iris = load_iris()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(iris.data), rows)
    x = iris.data[pick] + rng.normal(0, 0.1, (rows, 4))
    columns = {name: pa.array(x[:, i]) for i, name in enumerate(FEATURES)}
    ids = pa.array([f"row-{i:05d}" for i in range(rows)])
    species = pa.array(iris.target_names[iris.target[pick]].tolist())
    return pa.table({"id": ids, **columns, "species": species})


def a_train_job(name: str) -> str:
    """A job row for a version to point at (the registry keeps which job made it)."""
    with session_scope() as s:
        return jobs.create_job(s, kind=JobKind.train, model_name=name, spec={}, queue="t").id


def register(trained: Any, family: str) -> ModelVersionOut:
    """A trained model saved to the store and registered as a new model's version 1."""
    name = unique("batch")
    job_id = a_train_job(name)
    saved = modelio.save(trained, open_store(), f"models/{name}/{job_id}")
    with session_scope() as s:
        return model_registry.register_model_version(
            s, model_name=name, family=family, params=trained.spec.params,
            input_schema=trained.input_schema, metrics={}, artifact_uri=saved.uri,
            sha256=saved.sha256, job_id=job_id,
        )  # fmt: skip


@pytest.fixture(scope="module")
def iris_model(environment: dict[str, str]) -> ModelVersionOut:
    body = {"model_name": "iris", "family": "mlp", "dataset": {"builtin": "iris"},
            "training": {"epochs": 20, "learning_rate": 0.01}}  # fmt: skip
    return register(train(resolve_train(TrainRequest.model_validate(body))), "mlp")


def predict_job(version: ModelVersionOut, found: DatasetVersionOut, **selection: Any) -> JobOut:
    """A batch prediction's job, recorded as the API records one (never sent)."""
    data = RunPredictDataset(
        name=found.name, version=found.version, file=datasets.file_of(found), **selection
    )
    spec = PredictSpec(model_name=version.model_name, version=version.version, dataset=data)
    with session_scope() as s:
        return jobs.create_job(
            s, kind=JobKind.predict, model_name=version.model_name, queue="predict",
            spec=spec.model_dump(mode="json"), model_version=version.version,
        )  # fmt: skip


def run(job: JobOut, worker: str | None = None) -> JobOut:
    worker_jobs.run_predict_job(job.id, worker=worker or unique("test-worker"))
    with session_scope() as s:
        return job_reads.get_job(s, job.id)


def output_of(job: JobOut) -> pa.Table:
    assert job.state is JobState.succeeded, job.error
    assert job.result is not None
    store = open_store()
    path = store.local_path(store.key_of(job.result["output"]["uri"]))
    assert path is not None
    return pq.read_table(path)


def per_row(version: ModelVersionOut, rows: list[Any]) -> list[dict[str, Any]]:
    return [inference.predict(version, [row])[0] for row in rows]


def assert_matches(out: pa.Table, expected: list[dict[str, Any]], classes: list[str]) -> None:
    assert out.column("label").to_pylist() == [e["label"] for e in expected]
    for c in classes:
        got = out.column(f"p_{c}").to_numpy()
        want = np.array([e["probabilities"][c] for e in expected])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture
def chunk_rows(setting: Callable[[str, str], None]) -> Callable[[int], None]:
    return lambda n: setting("TORCHQUEUE_PREDICT_CHUNK_ROWS", str(n))


def test_outputs_match_per_row_predictions_in_order_with_the_id(
    iris_model: ModelVersionOut, chunk_rows: Callable[[int], None]
) -> None:
    chunk_rows(64)  # 500 rows: 8 chunks, the last of 52 rows
    table = iris_table(500)
    found = store_dataset(unique("iris"), table, row_group_size=37)
    job = run(predict_job(iris_model, found, features=FEATURES, id="id"))
    out = output_of(job)
    classes = ["setosa", "versicolor", "virginica"]
    assert out.column_names == ["id", "label", *(f"p_{c}" for c in classes)]
    assert out.column("id").equals(table.column("id"))
    rows = [list(r) for r in zip(*(table.column(f).to_pylist() for f in FEATURES), strict=True)]
    assert_matches(out, per_row(iris_model, rows), classes)
    assert job.result is not None
    output = job.result["output"]
    assert output["rows"] == 500 and output["format"] == "parquet"
    assert [c["name"] for c in output["columns"]] == out.column_names
    assert job.result["model_name"] == iris_model.model_name
    assert job.result["model_version"] == iris_model.version
    assert job.progress == {"chunks_done": 8, "chunks": 8, "rows_done": 500, "rows": 500,
                            "chunk_rows": 64, "fraction": 1.0}  # fmt: skip
    store = open_store()
    assert not store.exists(batch_predict.part_key(job.id, 0))  # parts deleted


@pytest.mark.parametrize("size", [1, 7, 10, 64, 1000])
def test_chunks_cover_every_row_once_whatever_the_row_groups(tmp_path: Path, size: int) -> None:
    table = pa.table({"n": pa.array(range(100))})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=13)
    file = DatasetFile(name="t", version=1, uri=path.as_uri(), format="parquet",
                                sha256="x")  # fmt: skip
    source = batch_predict.Source(path, file)
    for first in (0, 3):
        got = [c["n"].to_pylist() for c in source.chunks(["n"], size, first)]
        expected = [list(range(s, min(s + size, 100))) for s in range(first * size, 100, size)]
        assert got == expected


def test_columns_default_to_those_the_model_was_trained_on(
    iris_model: ModelVersionOut, chunk_rows: Callable[[int], None]
) -> None:
    chunk_rows(100)
    table = iris_table(120, seed=1)
    found = store_dataset(unique("iris"), table)
    name = unique("recorded")
    job_id = a_train_job(name)
    with session_scope() as s:  # the same weights, with the columns recorded
        recorded = model_registry.register_model_version(
            s, model_name=name, family="mlp", params=iris_model.params,
            input_schema={**iris_model.input_schema, "columns": FEATURES}, metrics={},
            artifact_uri=iris_model.artifact_uri, sha256=iris_model.sha256, job_id=job_id,
        )  # fmt: skip
    out = output_of(run(predict_job(recorded, found)))
    rows = [list(r) for r in zip(*(table.column(f).to_pylist() for f in FEATURES), strict=True)]
    assert out.column_names == ["label", "p_setosa", "p_versicolor", "p_virginica"]
    assert_matches(out, per_row(recorded, rows), ["setosa", "versicolor", "virginica"])


def test_a_model_without_recorded_columns_needs_features(iris_model: ModelVersionOut) -> None:
    found = store_dataset(unique("iris"), iris_table(10))
    job = run(predict_job(iris_model, found))
    assert job.state is JobState.failed and job.error is not None
    assert job.error["type"] == "bad_data" and job.error["field"] == "dataset.features"
    assert "dataset.features" in job.error["detail"]


@pytest.mark.parametrize(
    ("selection", "field", "words"),
    [
        ({"features": ["sepal_length", "nope"]}, "dataset.features", "no column 'nope'"),
        ({"features": ["sepal_length"]}, "dataset.features", "hold 1 numbers a row"),
        ({"features": ["id", "sepal_length", "sepal_width", "petal_length"]},
         "dataset.features", "column 'id' holds string values"),
        ({"features": FEATURES, "id": "nope"}, "dataset.id", "no column 'nope'"),
        ({"text": "species"}, "dataset.text", "reads numbers"),
    ],
)  # fmt: skip
def test_bad_columns_fail_the_job_naming_the_field(
    iris_model: ModelVersionOut, selection: dict[str, Any], field: str, words: str
) -> None:
    found = store_dataset(unique("iris"), iris_table(10))
    job = run(predict_job(iris_model, found, **selection))
    assert job.state is JobState.failed and job.error is not None
    assert job.error["type"] == "bad_data" and job.error["field"] == field
    assert words in job.error["detail"]


def test_a_missing_value_is_named_by_column_and_row(
    iris_model: ModelVersionOut, chunk_rows: Callable[[int], None]
) -> None:
    chunk_rows(4)
    table = iris_table(10)
    values = table.column("petal_width").to_pylist()
    values[6] = None
    table = table.set_column(4, "petal_width", pa.array(values, pa.float64()))
    job = run(predict_job(iris_model, store_dataset(unique("iris"), table), features=FEATURES))
    assert job.error is not None and job.error["field"] == "dataset.features"
    assert job.error["detail"] == "column 'petal_width' is empty at row 6"


def test_a_regression_writes_values(chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(50)
    body = {"model_name": "diabetes", "family": "mlp", "dataset": {"builtin": "diabetes"},
            "training": {"epochs": 3}}  # fmt: skip
    version = register(train(resolve_train(TrainRequest.model_validate(body))), "mlp")
    x = load_diabetes().data[:120]
    names = [f"x{i}" for i in range(x.shape[1])]
    table = pa.table({n: pa.array(x[:, i].astype(np.float32)) for i, n in enumerate(names)})
    out = output_of(run(predict_job(version, store_dataset(unique("d"), table), features=names)))
    assert out.column_names == ["value"] and out.schema.field("value").type == pa.float32()
    rows = [list(map(float, r)) for r in x.astype(np.float32)]
    want = [e["value"] for e in per_row(version, rows)]
    np.testing.assert_allclose(out.column("value").to_numpy(), want, rtol=1e-5)


def test_a_text_model_reads_its_column_of_texts(
    trained: Any, chunk_rows: Callable[[int], None]
) -> None:
    chunk_rows(3)
    version = register(trained, "text_lstm")
    texts = ["good film", "bad film", "a good one", "", "bad", "film film film", "good"]
    table = pa.table({"review": texts, "n": list(range(7))})
    out = output_of(
        run(predict_job(version, store_dataset(unique("t"), table), text="review", id="n"))
    )
    assert out.column("n").to_pylist() == list(range(7))
    expected = per_row(version, texts)
    classes = [str(c) for c in inference.get_model(version).classes or []]
    assert out.column("label").to_pylist() == [e["label"] for e in expected]
    for c in classes:
        np.testing.assert_allclose(
            out.column(f"p_{c}").to_numpy(), [e["probabilities"][c] for e in expected], rtol=1e-5
        )


def test_a_second_attempt_resumes_after_the_chunks_written(
    iris_model: ModelVersionOut, chunk_rows: Callable[[int], None]
) -> None:
    """An attempt that wrote chunks 0-2 and died: the next scores chunks 3-4 only. The parts
    of the first attempt are marked (their probabilities set to -1), so the output shows
    which attempt wrote which rows."""
    chunk_rows(20)
    table = iris_table(90)
    found = store_dataset(unique("iris"), table)
    job = predict_job(iris_model, found, features=FEATURES, id="id")
    first = unique("first-worker")
    with session_scope() as s:
        claimed = jobs.claim_job(s, job.id, first, lease_seconds=30)
        assert claimed is not None
        progress = {"chunks_done": 3, "chunks": 5, "rows_done": 60, "rows": 90,
                    "chunk_rows": 20, "fraction": 0.6}  # fmt: skip
        jobs.set_progress(s, job.id, first, progress)
    model = inference.get_model(iris_model)
    sel = batch_predict.Selection(FEATURES, False, "id", "dataset.features")
    out = batch_predict.layout(model, "id", pa.string())
    store = open_store()
    source = batch_predict.Source(
        dataset_files.local_copy(datasets.file_of(found)), datasets.file_of(found)
    )
    for index, chunk in enumerate(source.chunks(sel.columns, 20, 0)):
        if index == 3:
            break
        scored = batch_predict.score(model, chunk, sel, index * 20, out)
        marked = [
            scored.column(0),
            scored.column(1),
            *[pa.array([-1.0] * len(scored), pa.float32())] * 3,
        ]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "p.parquet"
            pq.write_table(pa.Table.from_arrays(marked, schema=out.schema), path)
            store.put_file(batch_predict.part_key(job.id, index), path)
    with session_scope() as s:  # the lease expired: the reaper's requeue
        assert jobs.requeue(s, job.id, reason="lease expired", worker=None, charge_attempt=True)
    done = run(job)
    assert done.attempts == 2
    result = output_of(done)
    assert result.column("id").equals(table.column("id"))
    marks = result.column("p_setosa").to_pylist()
    assert marks[:60] == [-1.0] * 60 and all(p >= 0 for p in marks[60:])
    with session_scope() as s:
        resumed = [e for e in job_reads.list_events(s, job.id) if e.kind.value == "resumed"]
    assert [e.message for e in resumed] == ["resumed from chunk 3 of 5"]


def test_a_cancelled_job_stops_between_chunks_and_leaves_no_parts(
    iris_model: ModelVersionOut, chunk_rows: Callable[[int], None]
) -> None:
    chunk_rows(10)
    found = store_dataset(unique("iris"), iris_table(50))
    job = predict_job(iris_model, found, features=FEATURES)
    worker = unique("test-worker")
    with session_scope() as s:
        claimed = jobs.claim_job(s, job.id, worker, lease_seconds=30)
        jobs.request_cancel(s, job.id)
    assert claimed is not None
    spec = PredictSpec.model_validate(claimed.spec)
    with worker_jobs.Lease(job.id, worker, interval=60) as lease:
        lease.cancel.set()  # what the lease thread sets when it reads 'cancelling'
        ending = batch_predict.run(claimed, spec, iris_model, worker, lease)
    assert ending is not None and ending.state is JobState.cancelled
    assert ending.outcome == {"message": "cancelled after 0 of 5 chunks"}
    assert not open_store().exists(batch_predict.part_key(job.id, 0))
    assert not open_store().exists(batch_predict.output_key(job.id))
