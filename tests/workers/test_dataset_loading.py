"""Training on stored data sets: Parquet tables from the artifact store or from a URL,
loaded whole or streamed by row group, with the same model either way."""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from shared.artifacts import LocalArtifactStore, open_store
from shared.db import datasets
from shared.db.session import session_scope
from shared.errors import BadData
from shared.schemas import DatasetFile, RunDataset, TrainRequest, TrainSpec
from shared.validation import resolve_train
from tests.shared.test_artifacts_s3 import S3, s3  # noqa: F401  the fixture, for the last test
from workers import dataset_files, modelio
from workers.checkpoint import Checkpointer
from workers.rank import Dist
from workers.training import Hooks, Interrupted, Trained, prepare, train

Setting = Callable[[str, str], None]


def table(n: int, seed: int = 0, task: str = "classes") -> dict[str, Any]:
    """Six features; classes from a linear rule (or a noisy linear target)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) * [1, 2, 0.5, 3, 1, 10] + [0, 5, -1, 0, 2, 50]
    score = x[:, 0] - 0.5 * x[:, 1] + 2 * x[:, 2] + 0.1 * x[:, 5]
    columns: dict[str, Any] = {f"f{i}": x[:, i] for i in range(6)}
    if task == "regression":
        columns["y"] = score + rng.normal(scale=0.1, size=n)
    else:
        columns["y"] = np.where(score > np.median(score), "high", "low")
    return columns


def stored(
    columns: dict[str, Any], tmp_path: Path, rows_per_group: int = 256, name: str | None = None
) -> DatasetFile:
    """A version of a data set, made as the upload route makes one: Parquet in the store."""
    path = tmp_path / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=rows_per_group)
    sha, size = dataset_files.sha256_of(path), path.stat().st_size
    store = open_store()
    key = f"datasets/test/{uuid.uuid4().hex}.parquet"
    uri = store.put_file(key, path)
    with session_scope() as session:
        version = datasets.create_version(
            session,
            name=name or f"t-{uuid.uuid4().hex[:8]}",
            source="upload",
            format="parquet",
            uri=uri,
            sha256=sha,
            size=size,
            rows=len(columns["y"]),
            columns=[{"name": c, "type": "double"} for c in columns],
            value_counts={},
            created_by=None,
            admin=True,
        )
    return datasets.file_of(version)


def spec_for(
    file: DatasetFile,
    family: str = "mlp",
    validation: DatasetFile | None = None,
    text: str | None = None,
    **training: Any,
) -> TrainSpec:
    """The spec a job on ``file`` runs: as resolved for a small inline set of the same kind,
    with the stored data set in its place."""
    inline: dict[str, Any] = (
        {"inputs": ["a b", "c d"], "labels": ["x", "y"]}
        if family == "text_lstm"
        else {"inputs": [[0.0] * 6, [1.0] * 6], "labels": ["high", "low"]}
    )
    params: dict[str, Any] = (
        {"hidden_sizes": [16]} if family == "mlp" else {"max_len": 8, "num_words": 50}
    )
    if training.pop("regression", False):
        inline["labels"] = [0.5, 1.5]
        params["task"] = "regression"
    req = TrainRequest.model_validate(
        {
            "model_name": "stored",
            "family": family,
            "params": params,
            "dataset": {"inline": inline},
            "training": {"epochs": 3, "batch_size": 50, "learning_rate": 0.01, **training},
        }
    )
    spec = resolve_train(req)
    dataset = RunDataset(
        name=file.name, label="y", text=text, file=file, validation_file=validation
    )
    return spec.model_copy(update={"dataset": dataset})


def same_model(a: Trained, b: Trained) -> None:
    for (name, x), y in zip(
        a.module.state_dict().items(), b.module.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
    assert a.preprocessor.to_json() == b.preprocessor.to_json()
    assert a.target == b.target


def accuracy(trained: Trained, columns: dict[str, Any], tmp_path: Path) -> float:
    store = LocalArtifactStore(tmp_path / "models")
    saved = modelio.save(trained, store, f"models/m/{uuid.uuid4().hex}")
    model = modelio.load(store, saved.uri, saved.sha256)
    rows = np.stack([columns[f"f{i}"] for i in range(6)], axis=1).tolist()
    answers = model.predict(rows)
    return float(np.mean([a["label"] == y for a, y in zip(answers, columns["y"], strict=True)]))


def test_a_stored_data_set_trains_as_well_as_the_same_rows_inline(tmp_path: Path) -> None:
    columns, held_out = table(2000), table(1000, seed=9)
    file = stored(columns, tmp_path)
    from_store = train(spec_for(file, epochs=5))
    rows = np.stack([columns[f"f{i}"] for i in range(6)], axis=1).tolist()
    inline = resolve_train(
        TrainRequest.model_validate(
            {
                "model_name": "inline",
                "family": "mlp",
                "params": {"hidden_sizes": [16]},
                "dataset": {"inline": {"inputs": rows, "labels": columns["y"].tolist()}},
                "training": {"epochs": 5, "batch_size": 50, "learning_rate": 0.01},
            }
        )
    )
    from_rows = train(inline)
    ours, theirs = accuracy(from_store, held_out, tmp_path), accuracy(from_rows, held_out, tmp_path)
    assert ours >= 0.93 and theirs >= 0.93
    assert abs(ours - theirs) <= 0.03
    assert from_store.spec.dataset.lineage() == {
        "name": file.name,
        "version": file.version,
        "sha256": file.sha256,
    }
    assert 0.15 < from_store.history[0]["val_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("family", "task"),
    [("mlp", "classes"), ("mlp", "regression"), ("text_lstm", "classes")],
)
def test_streaming_and_loading_give_the_same_model(
    family: str, task: str, tmp_path: Path, setting: Setting
) -> None:
    columns = table(1500, task=task)
    text = None
    if family == "text_lstm":
        words = np.array(["alpha", "beta", "gamma", "delta", "eps"])
        columns["words"] = [" ".join(words[(np.abs(r) * 3).astype(int) % 5]) for r in
                            np.stack([columns["f0"], columns["f2"]], axis=1)]  # fmt: skip
        text = "words"
    # Groups of 200 rows, batches of 64: batches straddle groups.
    file = stored(columns, tmp_path, rows_per_group=200)
    spec = spec_for(file, family, text=text, batch_size=64, regression=task == "regression")
    loaded = train(spec)
    assert prepare(spec, torch.device("cpu")).feed.__class__.__name__ == "Loaded"
    setting("TORCHQUEUE_DATASET_MEMORY_MB", "0.01")
    assert prepare(spec, torch.device("cpu")).feed.__class__.__name__ == "Streamed"
    streamed = train(spec)
    same_model(loaded, streamed)
    assert len(loaded.history) == 3 and "val_loss" in loaded.history[-1]
    if text is not None:  # not named: the only column of texts
        unnamed = prepare(spec_for(file, family), torch.device("cpu")).feed
        assert unnamed is not None and unnamed.train_table.text == "words"


def test_a_streamed_run_resumes_from_its_checkpoint_as_if_never_stopped(
    tmp_path: Path, setting: Setting
) -> None:
    setting("TORCHQUEUE_DATASET_MEMORY_MB", "0.01")
    spec = spec_for(stored(table(1200), tmp_path, rows_per_group=300), epochs=4)
    whole = train(spec)
    stop = {"now": False}

    def note(record: dict[str, Any]) -> None:
        stop["now"] = record["epoch"] >= 2

    checkpoints = Checkpointer(LocalArtifactStore(tmp_path / "ck"), "checkpoints/job/checkpoint")
    with pytest.raises(Interrupted):
        train(
            spec,
            hooks=Hooks(on_epoch=note, should_stop=lambda: stop["now"], checkpointer=checkpoints),
        )
    resumed_from: list[int] = []
    resumed = train(spec, hooks=Hooks(on_resume=resumed_from.append, checkpointer=checkpoints))
    assert resumed_from == [2]
    for a, b in zip(
        resumed.module.state_dict().values(), whole.module.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("memory_mb", ["4096", "0.01"], ids=["loaded", "streamed"])
def test_data_parallel_ranks_share_the_epoch_as_dist_shard_does(
    memory_mb: str, tmp_path: Path, setting: Setting
) -> None:
    setting("TORCHQUEUE_DATASET_MEMORY_MB", memory_mb)
    columns = table(1001)
    columns["f0"] = np.arange(1001, dtype=np.float64)  # which row it is, once standardized
    feed = prepare(
        spec_for(stored(columns, tmp_path, rows_per_group=100)), torch.device("cpu")
    ).feed
    assert feed is not None

    def epoch(dist: Dist) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        return torch.cat([x[:, 0] for x, _ in feed.blocks(gen, 32, 64, dist)])

    whole = epoch(Dist())
    assert len(whole) == feed.n_train and len(set(whole.tolist())) == feed.n_train
    for rank in (0, 1):
        assert torch.equal(epoch(Dist(rank, 2)), Dist(rank, 2).shard(whole))


@pytest.mark.parametrize("n", [2, 3, 10, 1001])
def test_the_split_takes_as_many_rows_as_an_inline_split(n: int, tmp_path: Path) -> None:
    run = prepare(spec_for(stored(table(n), tmp_path, rows_per_group=4)), torch.device("cpu"))
    assert (run.n_train, run.n_val) == (n - min(int(n * 0.2), n - 1), min(int(n * 0.2), n - 1))


def test_a_validation_data_set_validates_instead_of_a_split(
    tmp_path: Path, setting: Setting
) -> None:
    train_file = stored(table(1000), tmp_path)
    val_columns = table(300, seed=4)
    val_file = stored(val_columns, tmp_path, rows_per_group=128)
    spec = spec_for(train_file, validation=val_file)
    run = prepare(spec, torch.device("cpu"))
    assert (run.n_train, run.n_val) == (1000, 300)
    loaded = train(spec)
    assert loaded.history[-1]["val_accuracy"] > 0.8
    setting("TORCHQUEUE_DATASET_MEMORY_MB", "0.01")
    same_model(loaded, train(spec))


def test_a_missing_label_column_names_it(tmp_path: Path) -> None:
    file = stored(table(100), tmp_path)
    spec = spec_for(file)
    spec.dataset.label = "price"
    with pytest.raises(BadData) as caught:
        train(spec)
    assert caught.value.field == "dataset.label" and "'price'" in caught.value.detail


def url_version(uri: str, fmt: str = "parquet") -> DatasetFile:
    with session_scope() as session:
        version = datasets.create_version(
            session,
            name=f"u-{uuid.uuid4().hex[:8]}",
            source="url",
            format=fmt,
            uri=uri,
            created_by=None,
            admin=True,
        )
    return datasets.file_of(version)


def test_a_url_source_records_its_first_read_and_a_changed_file_fails_the_job(
    tmp_path: Path, setting: Setting
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    path = folder / "houses.parquet"
    pq.write_table(pa.table(table(400)), path)
    file = url_version(path.as_uri())
    unread = file.model_copy()  # as a job sent before the first read carries it

    with pytest.raises(BadData) as off:
        train(spec_for(file))
    assert (
        "cannot be read" in off.value.detail
        and "TORCHQUEUE_DATASET_URL_PREFIXES" in off.value.detail
    )

    setting("TORCHQUEUE_DATASET_URL_PREFIXES", f"s3://elsewhere/,{folder.as_uri()}/")
    first = train(spec_for(file))
    sha = dataset_files.sha256_of(path)
    assert first.spec.dataset.lineage() == {"name": file.name, "version": 1, "sha256": sha}
    with session_scope() as session:
        recorded = datasets.get_version(session, file.name, 1, None)
    assert (recorded.sha256, recorded.rows, recorded.bytes) == (sha, 400, path.stat().st_size)
    assert [c["name"] for c in recorded.columns or []][-1] == "y"

    pq.write_table(pa.table(table(400, seed=1)), path)  # the source's bytes change
    for job_file in (unread, datasets.file_of(recorded)):
        with pytest.raises(BadData) as changed:
            train(spec_for(job_file))
        detail = changed.value.detail
        assert path.as_uri() in detail and sha in detail and dataset_files.sha256_of(path) in detail


def test_a_csv_url_source_is_converted_once_ingest_is_there(
    tmp_path: Path, setting: Setting
) -> None:
    path = tmp_path / "houses.csv"
    columns = table(300)
    path.write_text(
        ",".join(columns) + "\n"
        + "\n".join(",".join(str(columns[c][i]) for c in columns) for i in range(300)) + "\n"
    )  # fmt: skip
    setting("TORCHQUEUE_DATASET_URL_PREFIXES", f"{tmp_path.as_uri()}/")
    spec = spec_for(url_version(path.as_uri(), "csv"))
    if importlib.util.find_spec("shared.ingest") is None:
        with pytest.raises(BadData, match="reads Parquet URL sources only"):
            train(spec)
    else:
        assert train(spec).history[-1]["val_accuracy"] > 0.8


def test_the_cache_keeps_the_recently_used_within_its_bound(
    tmp_path: Path, setting: Setting
) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    setting("TORCHQUEUE_DATASET_URL_PREFIXES", f"{folder.as_uri()}/")
    files = []
    for i in range(3):
        path = folder / f"{i}.parquet"
        pq.write_table(pa.table({"x": np.random.default_rng(i).normal(size=20_000)}), path)
        files.append(url_version(path.as_uri()))

    def read(i: int) -> Path:
        time.sleep(0.02)  # file times on some file systems tick every few milliseconds
        return dataset_files.local_copy(files[i])

    first = read(0)
    size = first.stat().st_size  # the three stored forms are within a few bytes of it
    setting("TORCHQUEUE_DATASET_CACHE_MB", str(2.5 * size / 2**20))  # room for two
    second, third = read(1), read(2)
    assert not first.exists() and second.exists() and third.exists()
    read(1)  # used again: now the most recent
    again = read(0)
    assert again.exists() and second.exists() and not third.exists()


# Last in this module: from here on, the artifact store is moto's S3.
def test_on_s3_a_url_source_and_an_uploaded_version_train_through_the_cache(
    s3: S3,  # noqa: F811  the fixture imported above
    tmp_path: Path,
    setting: Setting,
) -> None:
    source = tmp_path / "houses.parquet"
    pq.write_table(pa.table(table(600)), source)
    s3.client.put_object(Bucket=s3.bucket, Key="exports/houses.parquet", Body=source.read_bytes())
    setting("TORCHQUEUE_DATASET_URL_PREFIXES", f"s3://{s3.bucket}/exports/")
    from_url = train(spec_for(url_version(f"s3://{s3.bucket}/exports/houses.parquet")))
    assert (from_url.spec.dataset.lineage() or {})["sha256"] == dataset_files.sha256_of(source)

    uploaded = stored(table(600, seed=2), tmp_path)
    assert uploaded.uri.startswith("s3://")
    assert train(spec_for(uploaded)).history[-1]["val_accuracy"] > 0.8
    assert (dataset_files.cache_dir() / f"{uploaded.sha256}.parquet").is_file()
