"""``image_cnn`` on the CPU, without Celery: its parameter count against the built module,
a save and load that answers the same, the digits as 1×8×8 images learnt to 95%, and
images read from a stored npz data set."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from shared.artifacts import LocalArtifactStore, open_store
from shared.db import datasets
from shared.db.session import session_scope
from shared.errors import BadData, InvalidSpec
from shared.families import FAMILIES
from shared.schemas import DatasetVersionOut, TrainRequest
from shared.validation import resolve_train
from workers import dataset_files, modelio, tensors
from workers.families import BUILDERS
from workers.training import Trained, train

# Small and quick, and still over 0.95 on the digits.
QUICK = {"width": 8, "hidden_size": 32}
TRAINING = {"epochs": 12, "learning_rate": 0.005, "seed": 0}


def _train(
    dataset: dict[str, Any], found: DatasetVersionOut | None = None, **params: Any
) -> Trained:
    body = {"model_name": "digits", "family": "image_cnn", "params": {**QUICK, **params},
            "dataset": dataset, "training": TRAINING}  # fmt: skip
    return train(resolve_train(TrainRequest.model_validate(body), found))


@pytest.fixture(scope="module")
def digits() -> Trained:
    torch.set_num_threads(1)
    return _train({"builtin": "digits_images"})


@pytest.mark.parametrize(
    ("params", "shape"),
    [
        ({}, (1, 8, 8)),
        ({"blocks": 3, "width": 5, "kernel_size": 5, "pooling": "avg"}, (3, 17, 9)),
        ({"blocks": 1, "hidden_size": 0, "activation": "gelu", "kernel_size": 1}, (2, 5, 6)),
        ({"width": 700, "blocks": 2, "dropout": 0.5}, (1, 4, 4)),  # widths capped at 1024
    ],
)
def test_parameter_count_is_that_of_the_built_module(
    params: dict[str, Any], shape: tuple[int, int, int]
) -> None:
    family, builder = FAMILIES["image_cnn"], BUILDERS["image_cnn"]
    checked = family.params.model_validate(params).model_dump()
    pre = builder.fit_preprocessor(checked, cast(Sequence[Any], torch.rand(4, *shape)))
    module = builder.build(checked, pre, 7)
    assert family.parameter_count(checked, shape, 7) == sum(p.numel() for p in module.parameters())
    assert module(pre.encode(cast(Sequence[Any], torch.rand(3, *shape)))).shape == (3, 7)


def test_the_digits_images_are_learnt_to_95_percent(digits: Trained) -> None:
    assert digits.input_schema == {"kind": "image", "shape": [1, 8, 8]}
    assert digits.metrics["val_accuracy"] >= 0.95
    assert digits.preprocessor.to_json()["kind"] == "channel_standardizer"


def test_a_saved_model_loads_and_answers_the_same(digits: Trained, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    saved = modelio.save(digits, store, "models/digits/job")
    loaded = modelio.load(store, saved.uri, saved.sha256)
    images = torch.from_numpy(load_digits().data[:20]).float().reshape(20, 1, 8, 8)
    with torch.inference_mode():
        expected = digits.module(digits.preprocessor.encode(images))  # type: ignore[arg-type]
    as_tensor = loaded.forward(loaded.encode(tensors.encode(images)))
    as_lists = loaded.forward(loaded.encode(images.tolist()))
    assert torch.equal(as_tensor, expected) and torch.equal(as_lists, expected)
    answers = loaded.predict(images.tolist())
    assert [a["label"] for a in answers] == expected.argmax(1).tolist()
    with pytest.raises(BadData, match=r"\[rows, 1, 8, 8\]"):
        loaded.encode(tensors.encode(images.reshape(20, 1, 4, 16)))


def test_more_blocks_than_the_images_take_are_refused_naming_the_field() -> None:
    body = {"model_name": "m", "family": "image_cnn", "params": {"blocks": 4},
            "dataset": {"builtin": "digits_images"}}  # fmt: skip
    with pytest.raises(InvalidSpec) as info:
        resolve_train(TrainRequest.model_validate(body))
    assert info.value.field == "params.blocks"
    assert "8×8" in info.value.detail
    body |= {"params": {}, "dataset": {"builtin": "digits"}}
    with pytest.raises(InvalidSpec, match="takes image") as wrong:
        resolve_train(TrainRequest.model_validate(body))
    assert wrong.value.field == "dataset.builtin"


def test_inline_images_of_two_shapes_are_refused() -> None:
    image, short = [[[0.0, 1.0], [1.0, 0.0]]], [[[0.0, 1.0]]]
    body = {"model_name": "m", "family": "image_cnn", "params": {"blocks": 1},
            "dataset": {"inline": {"inputs": [image, short], "labels": [0, 1]}}}  # fmt: skip
    with pytest.raises(InvalidSpec) as info:
        resolve_train(TrainRequest.model_validate(body))
    assert info.value.field == "dataset.inline.inputs[1]"
    body["dataset"] = {"inline": {"inputs": [image, image], "labels": [0, 1]}}
    trained = train(resolve_train(TrainRequest.model_validate(body)))
    assert trained.input_schema == {"kind": "image", "shape": [1, 2, 2]}


def _stored_npz(arrays: dict[str, np.ndarray[Any, Any]], tmp_path: Path) -> DatasetVersionOut:
    """A version of a data set as an npz upload makes one (its columns as ingest records)."""
    path = tmp_path / f"{uuid.uuid4().hex}.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    sha256, size = dataset_files.sha256_of(path), path.stat().st_size
    uri = open_store().put_file(f"datasets/test/{uuid.uuid4().hex}.npz", path)
    columns = [
        {"name": n, "type": a.dtype.name, "shape": list(a.shape[1:])} for n, a in arrays.items()
    ]
    values, n = np.unique(arrays["y"], return_counts=True)
    counts = {"y": {str(k): int(c) for k, c in zip(values, n, strict=True)}}
    with session_scope() as session:
        return datasets.create_version(
            session, name=f"t-{uuid.uuid4().hex[:8]}", source="upload", format="npz", uri=uri,
            sha256=sha256, size=size,
            rows=len(arrays["y"]), columns=columns, value_counts=counts, created_by=None,
            admin=True,
        )  # fmt: skip


@pytest.mark.slow
def test_images_of_one_channel_train_from_a_stored_npz(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    bunch = load_digits()
    x = bunch.data.reshape(-1, 8, 8).astype(np.float32)  # [N, H, W]: one channel
    found = _stored_npz({"x": x, "y": bunch.target, "id": np.arange(len(x))}, tmp_path)
    with pytest.raises(InvalidSpec, match="one array of images") as info:
        _train({"name": found.name, "label": "y"}, found)
    assert info.value.field == "dataset.features"
    trained = _train({"name": found.name, "label": "y", "features": ["x"]}, found)
    assert trained.input_schema == {"kind": "image", "shape": [1, 8, 8]}
    assert trained.columns == ["x"]
    assert trained.metrics["val_accuracy"] >= 0.95
    flat = _stored_npz({"x": bunch.data, "y": bunch.target}, tmp_path)
    with pytest.raises(InvalidSpec, match=r"shape \[64\]") as refused:
        _train({"name": flat.name, "label": "y"}, flat)
    assert refused.value.field == "dataset.features"
