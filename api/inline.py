"""A training job's inline rows, stored as a data set behind the scenes, so that no job
carries its rows in its JSON: the job names the data set version instead, like any other,
and every job response stays small whatever the data's size.

The rows become one Parquet file: features as columns ``x0``, ``x1``, … (texts as
``text``) and the labels as ``label``, in the order given; images (nested lists
[channels][height][width]) become an npz file of the arrays ``x`` [rows, C, H, W] and
``label``. They are stored under the data
set ``inline.<model name>``, one version per job, created by the key that sent them.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from shared.artifacts import open_store, sha256_hex
from shared.auth import Principal
from shared.db import datasets
from shared.schemas import NAME_MAX, InlineData, RunDataset

PREFIX = "inline."


def _labels(labels: Sequence[object]) -> pa.Array:
    """The labels as one Arrow column: numbers as numbers; any other mixture as texts."""
    try:
        return pa.array(labels)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([str(y) for y in labels])


def _table(inline: InlineData) -> pa.Table:
    if isinstance(inline.inputs[0], str):
        return pa.table(
            {"text": pa.array(inline.inputs, pa.string()), "label": _labels(inline.labels)}
        )
    rows = np.asarray(inline.inputs, dtype=np.float64)
    columns = {f"x{i}": rows[:, i] for i in range(rows.shape[1])}
    return pa.table({**columns, "label": _labels(list(inline.labels))})


def _images(inline: InlineData, path: Path) -> list[dict[str, object]]:
    """Write the images and labels as an npz at ``path``; return its columns."""
    images = np.asarray(inline.inputs, dtype=np.float32)
    labels = np.asarray(_labels(inline.labels).to_numpy(zero_copy_only=False))
    if labels.dtype.kind == "O":
        labels = labels.astype(str)
    np.savez(path, x=images, label=labels)
    return [
        {"name": "x", "type": "float32", "shape": list(images.shape[1:])},
        {"name": "label", "type": "string" if labels.dtype.kind == "U" else labels.dtype.name,
         "shape": []},
    ]  # fmt: skip


def store_inline(
    session: Session, who: Principal, model_name: str, inline: InlineData
) -> RunDataset:
    """Store ``inline``'s rows and record them as a data set version (in ``session``,
    committed with the job); return the job's data set naming it."""
    image = not isinstance(inline.inputs[0], str) and isinstance(inline.inputs[0][0], list)
    fmt = "npz" if image else "parquet"
    name = (PREFIX + model_name)[:NAME_MAX]
    store = open_store()
    key = f"datasets/{name}/{uuid.uuid4().hex}.{fmt}"
    with tempfile.TemporaryDirectory(prefix="inline-") as tmp:
        path = Path(tmp) / f"data.{fmt}"
        if image:
            columns = _images(inline, path)
            text = False
        else:
            table = _table(inline)
            pq.write_table(table, path)
            columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
            text = "text" in table.column_names
        data = path.read_bytes()
        uri = store.put_file(key, path)
    version = datasets.create_version(
        session,
        name=name,
        source="inline",
        format=fmt,
        uri=uri,
        created_by=who.key_id,
        admin=True,  # the name is the system's; each version is its sender's
        sha256=sha256_hex(data),
        size=len(data),
        rows=len(inline.inputs),
        columns=columns,
    )
    return RunDataset(
        name=name,
        version=version.version,
        label="label",
        text="text" if text else None,
        file=datasets.file_of(version),
    )
