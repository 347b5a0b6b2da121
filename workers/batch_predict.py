"""Batch predictions over a stored data set.

The worker reads the data set in chunks of ``TORCHQUEUE_PREDICT_CHUNK_ROWS`` rows (Parquet
record batches, npz/npy arrays sliced), scores each chunk with the model cache's model in
forward passes of ``BATCH_ROWS`` rows, and writes the chunk's outputs as an object of its
own, ``outputs/<job id>/part-NNNNN.parquet`` (each put is atomic). The job's progress
records the chunks done and the chunk size, so that a job whose worker died resumes from
the last chunk written, with the same chunk boundaries. At the end the parts are combined,
one at a time, into ``outputs/<job id>.parquet``, the job succeeds with that output in its
result, and the parts are deleted.

The output has the data set's rows in their order. Its columns: the id column when one is
named (as it is in the data set), then for a classifier ``label`` (the class, as sync
predictions name it) and one ``p_<class>`` column per class, or for a regression
``value``. Probabilities are plain columns rather
than one list column so that the output converts to CSV (which has no lists) and reads in
pandas, SQL or a spreadsheet as it is; they are float32, as the model computes them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from shared.artifacts import ArtifactStore, open_store
from shared.config import get_settings
from shared.db import jobs
from shared.db.session import UNREACHABLE, session_scope
from shared.errors import BadData, Unavailable
from shared.jobstate import JobEventKind, JobState
from shared.schemas import DatasetFile, JobOut, ModelVersionOut, PredictSpec, RunPredictDataset
from workers import dataset_files, inference
from workers.modelio import LoadedModel

log = logging.getLogger(__name__)

# Rows per forward pass: large enough that a pass's fixed cost is nothing beside its
# work, small enough that the activations of the largest models we serve stay small.
BATCH_ROWS = 8192
# Rows per row group of the combined output (parts smaller than this are merged).
ROW_GROUP_ROWS = 65_536
# Dictionary encoding for the class names only: probabilities and values are nearly all
# distinct, and trying a dictionary on them first costs more than the whole write.
_DICTIONARY = ["label"]


def output_key(job_id: str) -> str:
    return f"outputs/{job_id}.parquet"


def part_key(job_id: str, index: int) -> str:
    return f"outputs/{job_id}/part-{index:05d}.parquet"


# --- what is read ----------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The columns a prediction reads: the model's inputs (feature columns, or the one
    column of texts) and the id column, if any."""

    inputs: list[str]
    text: bool
    id: str | None
    field: str  # the request's field that named (or should name) the inputs

    @property
    def columns(self) -> list[str]:
        extra = [self.id] if self.id is not None and self.id not in self.inputs else []
        return [*self.inputs, *extra]


def select(data: RunPredictDataset, version: ModelVersionOut, names: list[str]) -> Selection:
    """The columns to read, from the request, else from what the model was trained on
    (``input_schema["columns"]``); ``BadData`` naming the field when neither says."""
    schema = version.input_schema
    recorded = schema.get("columns") or None
    where = f"data set '{data.name}' version {data.file.version}"
    model = f"model '{version.model_name}' v{version.version}"
    if schema.get("kind") == "text":
        if data.features is not None:
            raise BadData(
                f"{model} reads texts: name its column with dataset.text, not dataset.features",
                field="dataset.features",
            )
        column = data.text or (recorded[0] if recorded else None)
        if column is None:
            raise BadData(
                f"{model} does not record the column it was trained on: name the column "
                "of texts with dataset.text",
                field="dataset.text",
            )
        inputs, field = [column], "dataset.text"
    else:
        if data.text is not None:
            raise BadData(
                f"{model} reads numbers: name its columns with dataset.features, not dataset.text",
                field="dataset.text",
            )
        inputs = list(data.features or recorded or [])
        if not inputs:
            raise BadData(
                f"{model} does not record the columns it was trained on: name its input "
                "columns with dataset.features",
                field="dataset.features",
            )
        field = "dataset.features"
    for name, at in [*((n, field) for n in inputs), (data.id, "dataset.id")]:
        if name is not None and name not in names:
            raise BadData(f"{where} has no column '{name}'; it has {', '.join(names)}", field=at)
    return Selection(inputs, schema.get("kind") == "text", data.id, field)


class Source:
    """A stored data set version, read a chunk at a time: a chunk is a dict of its
    columns, each a pyarrow array (Parquet) or a NumPy array (npz, npy)."""

    def __init__(self, path: Path, file: DatasetFile) -> None:
        self.path, self.format = path, file.format
        self._arrays: dict[str, np.ndarray] | None = None
        if file.format == "parquet":
            self._parquet = pq.ParquetFile(path)
            self.rows = self._parquet.metadata.num_rows
            self.names = self._parquet.schema_arrow.names
        elif file.format == "npy":  # one array, named as ingest names it; mapped, not read
            self._arrays = {"data": np.load(path, mmap_mode="r", allow_pickle=False)}
            self.names, self.rows = ["data"], len(self._arrays["data"])
        elif file.format == "npz":  # members are read when a chunk first needs them
            self._arrays = {}
            shapes = _npz_shapes(path)
            self.names = list(shapes)
            self.rows = next(iter(shapes.values()))[0] if shapes else 0
        else:
            raise BadData(
                f"data set '{file.name}' version {file.version} is {file.format}, "
                "which batch predictions do not read"
            )

    def _array(self, name: str) -> np.ndarray:
        """An npz member, read once (a member of a zip cannot be mapped)."""
        assert self._arrays is not None
        if name not in self._arrays:
            with np.load(self.path, allow_pickle=False) as npz:
                self._arrays[name] = npz[name]
        return self._arrays[name]

    def id_type(self, name: str) -> pa.DataType:
        if self.format == "parquet":
            return self._parquet.schema_arrow.field(name).type
        array = self._array(name)
        if array.ndim != 1:
            raise BadData(f"array '{name}' has {array.ndim} dimensions; an id is one value a row",
                          field="dataset.id")  # fmt: skip
        return pa.from_numpy_dtype(array.dtype)

    def chunks(self, columns: list[str], size: int, first: int) -> Iterator[dict[str, Any]]:
        """The chunks ``first``, ``first + 1``, …: ``size`` rows each, the last fewer."""
        if self.format != "parquet":
            arrays = {n: self._array(n) for n in columns}
            for start in range(first * size, self.rows, size):
                yield {n: a[start : start + size] for n, a in arrays.items()}
            return
        yield from self._parquet_chunks(columns, size, first * size)

    def _parquet_chunks(
        self, columns: list[str], size: int, start: int
    ) -> Iterator[dict[str, Any]]:
        """Record batches regrouped into chunks of exactly ``size`` rows, whatever the
        file's row groups, beginning at row ``start`` (row groups before it unread)."""
        meta, group, skip = self._parquet.metadata, 0, start
        while group < meta.num_row_groups and skip >= meta.row_group(group).num_rows:
            skip -= meta.row_group(group).num_rows
            group += 1
        pending: list[pa.RecordBatch] = []
        have = 0
        batches = self._parquet.iter_batches(
            batch_size=min(size, ROW_GROUP_ROWS),
            row_groups=range(group, meta.num_row_groups),
            columns=columns,
        )
        for batch in batches:
            if skip:
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                batch, skip = batch.slice(skip), 0
            pending.append(batch)
            have += batch.num_rows
            while have >= size:
                table = pa.Table.from_batches(pending)
                yield _columns_of(table.slice(0, size))
                rest = table.slice(size)
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            yield _columns_of(pa.Table.from_batches(pending))


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each member's shape, from its header alone."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shapes[member.removesuffix(".npy")] = read(f)[0]
    return shapes


def _ahead(chunks: Iterator[dict[str, Any]], pool: Executor) -> Iterator[dict[str, Any]]:
    """The chunks, each read in ``pool`` while the one before it is used."""
    reading = pool.submit(next, chunks, None)
    while (chunk := reading.result()) is not None:
        reading = pool.submit(next, chunks, None)
        yield chunk


def _columns_of(table: pa.Table) -> dict[str, Any]:
    return {name: table.column(name) for name in table.column_names}


# --- scoring ---------------------------------------------------------------------------


def _numbers(values: Any, name: str, offset: int, field: str) -> np.ndarray:
    """One input column as float32 rows (an array column flattened per row)."""
    if not isinstance(values, np.ndarray):
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise BadData(f"column '{name}' is empty at row {offset + row}", field=field)
        kind = values.type
        if pa.types.is_fixed_size_list(kind):
            flat = values.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            values = flat.reshape(len(values), kind.list_size)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            values = values.to_numpy()
        else:
            raise BadData(f"column '{name}' holds {kind} values, not numbers", field=field)
    if values.dtype.kind not in "biuf":
        raise BadData(f"column '{name}' holds {values.dtype} values, not numbers", field=field)
    return np.asarray(values).reshape(len(values), -1).astype(np.float32, copy=False)


def _features(chunk: dict[str, Any], sel: Selection, offset: int, width: int) -> torch.Tensor:
    parts = [_numbers(chunk[n], n, offset, sel.field) for n in sel.inputs]
    got = sum(p.shape[1] for p in parts)
    if got != width:
        raise BadData(
            f"the columns {', '.join(sel.inputs)} hold {got} numbers a row; "
            f"the model takes {width}",
            field=sel.field,
        )
    x = np.concatenate(parts, axis=1) if len(parts) > 1 else np.ascontiguousarray(parts[0])
    finite = np.isfinite(x)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        edges = np.cumsum([p.shape[1] for p in parts])
        name = sel.inputs[int(np.searchsorted(edges, col, side="right"))]
        raise BadData(
            f"column '{name}' holds NaN or an infinite value at row {offset + int(row)}",
            field=sel.field,
        )
    return torch.from_numpy(x)


def _texts(chunk: dict[str, Any], sel: Selection, offset: int) -> list[str]:
    name = sel.inputs[0]
    values = chunk[name]
    texts = values.tolist() if isinstance(values, np.ndarray) else values.to_pylist()
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            what = "empty" if text is None else f"{type(text).__name__}, not text,"
            raise BadData(f"column '{name}' is {what} at row {offset + row}", field=sel.field)
    return texts


@dataclass(frozen=True)
class Layout:
    """The output's schema, and a classifier's classes as an array to take names from."""

    schema: pa.Schema
    classes: pa.Array | None


def layout(model: LoadedModel, id_name: str | None, id_type: pa.DataType | None) -> Layout:
    fields = [pa.field(id_name, id_type)] if id_name is not None and id_type is not None else []
    classes = None
    if model.classes is None:
        fields.append(pa.field("value", pa.float32()))
    else:
        try:
            classes = pa.array(model.classes)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # numbers and texts mixed: as texts
            classes = pa.array([str(c) for c in model.classes])
        fields.append(pa.field("label", classes.type))
        fields += [pa.field(f"p_{c}", pa.float32()) for c in model.classes]
    names = [f.name for f in fields]
    if id_name is not None and names.count(id_name) > 1:
        raise BadData(
            f"the id column '{id_name}' has the name of an output column; outputs are "
            f"{', '.join(names[1:])}",
            field="dataset.id",
        )
    return Layout(pa.schema(fields), classes)


def score(
    model: LoadedModel, chunk: dict[str, Any], sel: Selection, offset: int, out: Layout
) -> pa.Table:
    """A chunk's outputs, one row per input row, in order (``offset``: its first row's
    number in the data set, for the messages)."""
    if sel.text:
        x = model.encode(_texts(chunk, sel, offset))
    else:
        schema = model.manifest["input_schema"]
        shape = [int(n) for n in schema["shape"]] if schema["kind"] == "image" else []
        width = math.prod(shape) if shape else int(schema["n_features"])
        # A tensor goes through the preprocessor as rows do (``Standardizer.encode``); an
        # image model's values take the shape of its images again.
        rows = _features(chunk, sel, offset, width)
        x = model.encode(rows.reshape(len(rows), *shape) if shape else rows)  # type: ignore[arg-type]
    scores = model.scores(inference.forward(model, x, BATCH_ROWS)).numpy()
    columns: list[Any] = []
    if sel.id is not None:
        ids = chunk[sel.id]
        columns.append(pa.array(ids) if isinstance(ids, np.ndarray) else ids)
    if out.classes is None:
        columns.append(pa.array(scores, pa.float32()))
    else:
        columns.append(out.classes.take(pa.array(scores.argmax(axis=1))))
        columns += [pa.array(scores[:, k], pa.float32()) for k in range(scores.shape[1])]
    return pa.Table.from_arrays(columns, schema=out.schema)


# --- the job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    rows: int
    chunk_rows: int

    @property
    def chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_rows)


def _resume_point(store: ArtifactStore, job: JobOut, rows: int) -> tuple[Plan, int]:
    """The chunk size and the first chunk to score: after the chunks an earlier attempt
    recorded (and whose parts are there), with that attempt's chunk size."""
    done = job.progress or {}
    size = done.get("chunk_rows")
    if not isinstance(size, int) or size < 1 or done.get("rows") != rows:
        return Plan(rows, get_settings().predict_chunk_rows), 0
    plan, first = Plan(rows, size), 0
    recorded = min(int(done.get("chunks_done", 0)), plan.chunks)
    while first < recorded and store.exists(part_key(job.id, first)):
        first += 1
    return plan, first


class _Progress:
    """Chunks done, written at most once per interval and always at the end: the point
    the next attempt resumes from."""

    def __init__(self, job_id: str, worker: str, plan: Plan) -> None:
        self.job_id, self.worker, self.plan = job_id, worker, plan
        self.interval = get_settings().progress_interval_seconds
        self.last = 0.0

    def __call__(self, done: int) -> None:
        if time.monotonic() - self.last < self.interval and done < self.plan.chunks:
            return
        self.last = time.monotonic()
        plan = self.plan
        progress = {
            "chunks_done": done,
            "chunks": plan.chunks,
            "rows_done": min(done * plan.chunk_rows, plan.rows),
            "rows": plan.rows,
            "chunk_rows": plan.chunk_rows,
            "fraction": done / plan.chunks if plan.chunks else 1.0,
        }
        try:
            with session_scope() as s:
                jobs.set_progress(s, self.job_id, self.worker, progress)
        except UNREACHABLE as exc:  # best effort: the next write, or a resume, catches up
            log.warning("could not write the progress of job %s: %s", self.job_id, exc)
        _tell_flower(f"chunk {done}/{plan.chunks}")


def _tell_flower(line: str) -> None:
    from celery import current_task

    task = current_task
    if not task or not getattr(task.request, "id", None):
        return
    with contextlib.suppress(Exception):  # events are a view; never fail a job for one
        task.send_event("task-progress", result=line)


def _note_resumed(job_id: str, worker: str, first: int, plan: Plan) -> None:
    message = f"resumed from chunk {first} of {plan.chunks}"
    with session_scope() as s:
        jobs.add_event(s, job_id, JobEventKind.resumed, message, worker)
        jobs.set_message(s, job_id, message)


def _write_part(store: ArtifactStore, key: str, table: pa.Table, tmp: Path) -> None:
    path = tmp / key.rsplit("/", 1)[1]
    pq.write_table(table, path, compression="lz4", use_dictionary=_DICTIONARY)
    store.put_file(key, path)


def _local(store: ArtifactStore, key: str, tmp: Path) -> Path:
    path = store.local_path(key)
    if path is None:
        path = tmp / key.rsplit("/", 1)[1]
        store.get_file(key, path)
    return path


def combine(
    store: ArtifactStore, job_id: str, plan: Plan, schema: pa.Schema, tmp: Path
) -> dict[str, Any]:
    """The parts as one Parquet object, streamed part by part; what the result records."""
    path = tmp / "output.parquet"
    pending: list[pa.Table] = []
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=_DICTIONARY) as writer:
        for index in range(plan.chunks):
            part = _local(store, part_key(job_id, index), tmp)
            pending.append(pq.read_table(part, schema=schema))
            if store.local_path(part_key(job_id, index)) is None:
                part.unlink()
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS or index == plan.chunks - 1:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS * 2)
                pending = []
    size, digest = path.stat().st_size, dataset_files.sha256_of(path)
    uri = store.put_file(output_key(job_id), path)
    columns = [{"name": f.name, "type": str(f.type)} for f in schema]
    return {"uri": uri, "rows": plan.rows, "bytes": size, "sha256": digest,
            "format": "parquet", "columns": columns}  # fmt: skip


def _delete_parts(store: ArtifactStore, job_id: str, chunks: int) -> None:
    for index in range(chunks):
        store.delete(part_key(job_id, index))
    path = store.local_path(f"outputs/{job_id}")
    if path is not None and path.is_dir():
        with contextlib.suppress(OSError):  # not empty: left for whoever wrote there
            path.rmdir()


@dataclass(frozen=True)
class Ending:
    """How a batch prediction ends: what ``workers.jobs`` records (``jobs.finish_job``'s
    values), and what to do once it is recorded."""

    state: JobState
    outcome: dict[str, Any]
    then: Callable[[], None] = lambda: None


def run(
    job: JobOut, spec: PredictSpec, version: ModelVersionOut, worker: str, lease: Any
) -> Ending | None:
    """Score the data set of ``spec`` with ``version`` into ``outputs/<job id>.parquet``,
    resuming after the chunks an earlier attempt wrote; how the job ends, or None when it
    was taken away meanwhile. Raises ``Unavailable`` when the worker shuts down midway
    (the job goes back to the queue, and resumes)."""
    from workers.devices import torch_device
    from workers.usage import Meter

    assert spec.dataset is not None
    data = spec.dataset
    meter = Meter(torch_device())
    source = Source(dataset_files.local_copy(data.file), data.file)
    sel = select(data, version, source.names)
    model = inference.get_model(version)
    out = layout(model, sel.id, source.id_type(sel.id) if sel.id is not None else None)
    store = open_store()
    plan, first = _resume_point(store, job, source.rows)
    if first:
        _note_resumed(job.id, worker, first, plan)
    progress = _Progress(job.id, worker, plan)
    index = done = first  # the next chunk to score; the chunks whose parts are written
    # One thread reads the next chunk and writes the last one's part while this one is
    # scored (pyarrow and torch release the GIL); its directory outlives it.
    with (
        tempfile.TemporaryDirectory(dir=get_settings().home_dir, prefix=".predict-") as tmp,
        ThreadPoolExecutor(1, thread_name_prefix=f"predict-io-{job.id[:8]}") as pool,
    ):
        writing: Future[None] | None = None
        for chunk in _ahead(source.chunks(sel.columns, plan.chunk_rows, first), pool):
            if lease.should_stop():
                break
            table = score(model, chunk, sel, index * plan.chunk_rows, out)
            if writing is not None:
                writing.result()
                done += 1
                progress(done)
            writing = pool.submit(_write_part, store, part_key(job.id, index), table, Path(tmp))
            index += 1
        if writing is not None:
            writing.result()
            done += 1
            progress(done)
        if done < plan.chunks or lease.should_stop():
            return _stopped(job.id, worker, lease, store, done, plan)
        output = combine(store, job.id, plan, out.schema, Path(tmp))
    result = {
        "model_name": version.model_name,
        "model_version": version.version,
        "dataset": {"name": data.name, "version": data.file.version, "sha256": data.file.sha256},
        "output": output,
    }
    outcome = {
        "result": result,
        "message": f"{plan.rows} rows scored into {output_key(job.id)}",
        "usage": meter.finish(plan.rows - min(first * plan.chunk_rows, plan.rows)),
    }
    return Ending(JobState.succeeded, outcome, lambda: _delete_parts(store, job.id, plan.chunks))


def _stopped(
    job_id: str, worker: str, lease: Any, store: ArtifactStore, done: int, plan: Plan
) -> Ending | None:
    if lease.lost.is_set():
        return None  # someone else's now: its parts are theirs too
    if lease.cancel.is_set():
        _delete_parts(store, job_id, plan.chunks)
        message = f"cancelled after {done} of {plan.chunks} chunks"
        return Ending(JobState.cancelled, {"message": message})
    raise Unavailable(f"{worker} is shutting down; the job resumes after chunk {done}")
