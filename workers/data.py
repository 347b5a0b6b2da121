"""Data sets as raw inputs and labels: built-in ones from disk (nothing is downloaded),
inline ones from the job's spec. Built-in feature sets come as one float32 tensor, made
once per process, rather than as lists of rows to convert for every job; a built-in
classification set's labels are its class names (``shared.datasets``), in their order."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch

from shared.datasets import BUILTIN_DATASETS
from shared.errors import BadData
from shared.schemas import DatasetFile, DatasetSpec, RunDataset
from workers import dataset_files

SENTIMENT = Path(__file__).parent / "datasets" / "sentiment.tsv"


@dataclass(frozen=True)
class RawData:
    # Texts, feature rows, or (built-in feature sets) a float32 tensor of rows, which
    # the families' preprocessors take as they take rows.
    inputs: Sequence[Any]
    labels: list[Any]
    # The classes in the data set's own order (built-in sets); None: sorted from the labels.
    classes: list[Any] | None = None
    # A stored data set's input columns (which the model's registry entry records).
    columns: list[str] | None = None


def _named(inputs: Sequence[Any], targets: list[Any], name: str) -> RawData:
    """Targets 0..k-1 as the built-in set's class names (a regression's stay numbers)."""
    known = BUILTIN_DATASETS.get(name)
    if known is None or not known.classes:
        return RawData(inputs, targets)
    names = list(known.classes)
    return RawData(inputs, [names[int(t)] for t in targets], names)


@lru_cache(maxsize=8)
def _builtin(name: str) -> RawData:
    if name == "sentiment":
        with SENTIMENT.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return _named([r["text"] for r in rows], [int(r["label"]) for r in rows], name)
    from sklearn import datasets as sk  # the bundled sets: no download

    loaders = {
        "iris": sk.load_iris,
        "wine": sk.load_wine,
        "breast_cancer": sk.load_breast_cancer,
        "digits": sk.load_digits,
        "digits_images": sk.load_digits,
        "diabetes": sk.load_diabetes,
    }
    if name not in loaders:
        raise BadData(f"unknown built-in data set {name!r}")
    bunch = loaders[name]()
    features = torch.from_numpy(bunch.data).float()
    image = BUILTIN_DATASETS[name].image
    if image is not None:  # the same values, as [rows, channels, height, width]
        features = features.reshape(len(features), *image)
    return _named(cast(Sequence[Any], features), bunch.target.tolist(), name)


def _numeric(table: Any, columns: list[str], where: str) -> torch.Tensor:
    """Columns of numbers (arrays of an npz flattened per row) side by side, as one
    float32 tensor, without a Python loop over rows."""
    import numpy as np

    parts = []
    for name in columns:
        values = np.asarray(table[name])
        if values.dtype.kind not in "biuf":
            raise BadData(
                f"column '{name}' of {where} holds {values.dtype} values, not numbers",
                field="dataset.features",
            )
        parts.append(values.reshape(len(values), -1).astype(np.float32, copy=False))
    return torch.from_numpy(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0].copy())


def _columns(spec: DatasetSpec, names: list[str], where: str) -> list[str]:
    label = spec.label or ""
    if label not in names:
        raise BadData(
            f"{where} has no column '{label}'; it has {', '.join(names)}", field="dataset.label"
        )
    wanted = spec.features or [n for n in names if n not in (label, spec.text)]
    for name in [*wanted, *([spec.text] if spec.text else [])]:
        if name not in names:
            raise BadData(f"{where} has no column '{name}'", field="dataset.features")
    return wanted


def _images(table: Any, columns: list[str], where: str) -> torch.Tensor:
    """One array of images as float32 [rows, C, H, W]; an array [rows, H, W] is one
    channel."""
    import numpy as np

    if len(columns) != 1:
        raise BadData(
            f"an image family takes one array of images; name it in dataset.features "
            f"(not {', '.join(columns) or 'none'})",
            field="dataset.features",
        )
    values = np.asarray(table[columns[0]])
    if values.dtype.kind not in "biuf" or values.ndim not in (3, 4):
        raise BadData(
            f"array '{columns[0]}' of {where} holds {values.dtype} values of shape "
            f"{list(values.shape)}; images are numbers [rows, channels, height, width] (or "
            "[rows, height, width], one channel)",
            field="dataset.features",
        )
    images = values.astype(np.float32, copy=False)
    return torch.from_numpy(images if values.ndim == 4 else images[:, None].copy())


def _stored(spec: DatasetSpec, file: DatasetFile, input_kind: str) -> RawData:
    """A stored data set's inputs and labels, column by column."""
    path = dataset_files.local_copy(file)
    where = f"data set '{file.name}' version {file.version}"
    label = spec.label or ""
    if file.format in ("npy", "npz"):
        import numpy as np

        with np.load(path, allow_pickle=False) as arrays:
            table = {n: arrays[n] for n in arrays.files} if file.format == "npz" else {}
        features = _columns(spec, list(table), where)
        read = _images if input_kind == "image" else _numeric
        x = cast(Sequence[Any], read(table, features, where))
        return RawData(x, table[label].tolist(), columns=features)
    if input_kind == "image":
        raise BadData(
            f"{where} is {file.format}; images are read from .npy or .npz data sets",
            field="dataset.name",
        )
    import pyarrow.parquet as pq

    features = _columns(spec, pq.read_schema(path).names, where)
    wanted = [spec.text] if spec.text else features
    table = pq.read_table(path, columns=[*wanted, label])
    labels = table.column(label).to_pylist()
    if spec.text:
        return RawData(table.column(spec.text).to_pylist(), labels)
    arrays = {n: table.column(n).to_numpy() for n in features}
    return RawData(cast(Sequence[Any], _numeric(arrays, features, where)), labels)


def load(spec: DatasetSpec, input_kind: str = "features") -> RawData:
    """The data set's raw inputs and labels, as the family's ``input_kind`` takes them."""
    if spec.builtin is not None:
        return _builtin(spec.builtin)
    if isinstance(spec, RunDataset) and spec.file is not None:
        return _stored(spec, spec.file, input_kind)
    if spec.inline is None:
        raise BadData("the data set has neither 'builtin' nor 'inline'")
    if len(spec.inline.inputs) != len(spec.inline.labels):
        raise BadData("inputs and labels differ in length")
    return RawData(list(spec.inline.inputs), list(spec.inline.labels))
