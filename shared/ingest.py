"""Uploaded data sets, checked and stored: :func:`ingest` reads an upload (CSV, Parquet, JSON
Lines, npy or npz) once, refuses what training cannot use, and writes the stored form:
Parquet for tables, the npy or npz bytes as they came for arrays.

Memory stays bounded whatever the file's size: tables are read a block at a time and written
a row group at a time, arrays a chunk at a time; besides that, only the class counts are
kept (at most ``MAX_CLASSES + 1`` values a column).

What is refused, and why:

- a missing value (an empty CSV cell, a JSON null or absent key, a Parquet null, a NaN):
  training has no imputation;
- a value that does not fit its column's type: the first block the reader sees (about
  ``BLOCK_BYTES`` of text) fixes the types, and a later misfit is an error rather than a
  column silently turned into text;
- columns other than integers, floats, strings and booleans (lists, structs, dates in a
  Parquet file): nothing downstream reads them. A CSV column of dates is kept as text.

Every refusal is an ``InvalidSpec`` that says where: its field is ``file.row[17].price`` for
a value, ``file.price`` for a whole column, ``file.x`` for an array, ``file.row[17]`` for a
row, ``file`` for the file as a whole, ``label`` for a label that names no column. Rows are
numbered from 1 and count data rows only: neither a CSV's header nor a blank line is a row
(where a JSON Lines row is not its line number, an error gives the line too). An array's
row k is its index k - 1 along the first axis.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from shared.errors import InvalidSpec
from shared.formats import FORMATS

StoredFormat = Literal["parquet", "npy", "npz"]

# A column with more distinct values than this is no set of classes: it gets no counts.
MAX_CLASSES = 1000
# CSV and JSON are parsed a block at a time, and the first block fixes the column types.
# pyarrow's CSV reader holds up to ~40 times its block size while it parses (measured:
# 39 MB at 1 MiB, 155 MB at 4 MiB), so 1 MiB, its default: thousands of rows to infer from.
BLOCK_BYTES = 1 << 20
# A row group is what a training reader decodes at once, and what the writer holds here.
# 128 Ki rows is ~20 MB for 20 numeric columns: big enough to compress well and keep the
# footer small (77 groups for 10 million rows), small enough to hold. Arrow's default,
# 1 Mi rows, would be 160 MB. The byte cap bounds wide text columns.
ROW_GROUP_ROWS = 1 << 17
ROW_GROUP_BYTES = 64 << 20
_PARQUET_BATCH_ROWS = 1 << 16
_ARRAY_CHUNK_BYTES = 16 << 20

# What a value of each type is, for an error that says a value is not one.
_WHAT = {"bool": "true or false", "string": "text", "nested": "a list or an object"}
# What pyarrow raises on a file it cannot read (a corrupt Parquet page is an OSError).
_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError)
# How each format says that a value is missing.
_MISSING = {"csv": "is empty", "jsonl": "is null or missing", "parquet": "is null"}


@dataclass(frozen=True)
class Inspected:
    """What :func:`ingest` stored. `columns` are ``{"name", "type"}``, and for arrays also
    ``"shape"`` (a row's shape: the array's without its first axis; an npy's one array is
    named ``data``). `value_counts` are ``{str(value): count}``, in the values' order, for
    each integer, string or boolean column (or 1-D array) with at most MAX_CLASSES distinct
    values."""

    format: StoredFormat
    rows: int
    columns: list[dict[str, Any]]
    value_counts: dict[str, dict[str, int]]
    sha256: str  # of the stored file
    bytes: int  # its size


class _Contents(NamedTuple):
    rows: int
    columns: list[dict[str, Any]]
    value_counts: dict[str, dict[str, int]]


def ingest(src: Path, fmt: str, dest: Path, *, label: str | None = None) -> Inspected:
    """Validate `src` (an uploaded file in format `fmt`), write its stored form to `dest`
    (Parquet for tables; the npy/npz bytes as they are), and describe it.

    `label`, where given, must name a column (an array). `dest` is written whole or not at
    all: a refused file leaves nothing there. Raises InvalidSpec, whose field says where
    (see the module's docstring)."""
    if fmt not in FORMATS:
        raise InvalidSpec(f"format {fmt!r} is not one of {', '.join(FORMATS)}", field="format")
    if src.stat().st_size == 0:
        raise InvalidSpec("the file is empty", field="file")
    stored: StoredFormat
    with _written_atomically(dest) as tmp:
        if fmt == "npy":
            stored, contents = "npy", _inspect_npy(src, label)
        elif fmt == "npz":
            stored, contents = "npz", _inspect_npz(src, label)
        else:
            stored, contents = "parquet", _store_table(src, fmt, label, tmp)
        if stored != "parquet":
            shutil.copyfile(src, tmp)
        with tmp.open("rb") as written:
            sha256 = hashlib.file_digest(written, "sha256").hexdigest()
    return Inspected(stored, *contents, sha256=sha256, bytes=dest.stat().st_size)


@contextlib.contextmanager
def _written_atomically(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest`, renamed onto it (once on disk) when the block ends,
    deleted when it raises: `dest` is never a partial file."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_label(label: str | None, names: list[str]) -> None:
    if label is None or label in names:
        return
    shown = ", ".join(repr(n) for n in names[:20])
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    raise InvalidSpec(
        f"label {label!r} is not a column of the data set; its columns are {shown}{more}",
        field="label",
    )


class _Tally:
    """Each countable column's values and how often each occurs, until there are more than
    MAX_CLASSES of them: then the column is no set of classes, and is dropped."""

    def __init__(self, names: Iterable[str]) -> None:
        self._counts: dict[str, Counter[Any] | None] = {name: Counter() for name in names}

    def names(self) -> list[str]:
        """The columns still counted."""
        return [name for name, tally in self._counts.items() if tally is not None]

    def add(self, name: str, values: Iterable[Any], counts: Iterable[int]) -> None:
        tally = self._counts.get(name)
        if tally is None:
            return
        for value, count in zip(values, counts, strict=True):
            tally[value] += count
        if len(tally) > MAX_CLASSES:
            self._counts[name] = None

    def result(self) -> dict[str, dict[str, int]]:
        return {
            name: {str(value): tally[value] for value in sorted(tally)}
            for name, tally in self._counts.items()
            if tally is not None
        }


def _first_failing(n: int, passes: Callable[[int], bool]) -> int:
    """The index of the first of `n` items that fails a check made on a prefix at a time:
    `passes(k)` says whether the first k items pass, and the n items together fail. A
    bisection, so that finding a bad value costs a few checks of a block, not one a value."""
    good, bad = 0, n
    while bad - good > 1:
        middle = (good + bad) // 2
        if passes(middle):
            good = middle
        else:
            bad = middle
    return good


def _type_name(dtype: Any) -> str:
    """pyarrow's type as we report it: numpy's names (``float64``, not ``double``), and
    ``string`` for every kind of text."""
    if _is_text(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_floating(dtype):
        return f"float{dtype.bit_width}"
    return str(dtype)


def _is_text(dtype: Any) -> bool:
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
    )


# Tables: CSV, JSON Lines and Parquet, read as record batches and written as Parquet.


def _store_table(src: Path, fmt: str, label: str | None, tmp: Path) -> _Contents:
    schema, batches = _TABLE_READERS[fmt](src)
    stored = _stored_schema(schema)
    _check_label(label, stored.names)
    tally = _Tally(f.name for f in stored if _countable(f.type))
    rows = 0
    with _ParquetOut(tmp, stored) as out:
        for batch in batches:
            batch = batch.cast(stored)
            _check_values(batch, rows, _MISSING[fmt])
            for name in tally.names():
                counted = pc.value_counts(batch.column(name)).flatten()
                tally.add(name, counted[0].to_pylist(), counted[1].to_pylist())
            rows += batch.num_rows
            out.add(batch, dictionary=tally.names())
    if rows == 0:
        raise InvalidSpec("the file has no rows, only column names", field="file")
    columns = [{"name": f.name, "type": _type_name(f.type)} for f in stored]
    return _Contents(rows, columns, tally.result())


def _stored_schema(schema: Any) -> Any:
    """The schema the stored Parquet file gets: the upload's, with every kind of text
    (large, view, dictionary-encoded) as plain strings and no metadata. Refuses a table
    without columns, a name used twice or not at all, and a type training cannot read."""
    _check_names(schema.names)
    return pa.schema([pa.field(f.name, _stored_type(f)) for f in schema])


def _check_names(names: list[str]) -> None:
    if not names:
        raise InvalidSpec("the file has no columns", field="file")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise InvalidSpec("a column has no name", field="file")
        if name in seen:
            raise InvalidSpec(f"the column name {name!r} is used twice", field=f"file.{name}")
        seen.add(name)


def _stored_type(field: Any) -> Any:
    dtype = field.type
    if _is_text(dtype) or (pa.types.is_dictionary(dtype) and _is_text(dtype.value_type)):
        return pa.string()
    # A null column had no value in the rows that fixed the types: its first row is refused
    # by the value check, and a file with no rows is refused as such.
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype):
        return dtype
    if pa.types.is_null(dtype):
        return dtype
    raise InvalidSpec(
        f"column {field.name!r} holds {dtype} values; only integers, floats, strings and "
        "booleans are accepted",
        field=f"file.{field.name}",
    )


def _countable(dtype: Any) -> bool:
    return bool(pa.types.is_integer(dtype) or pa.types.is_boolean(dtype) or _is_text(dtype))


def _check_values(batch: Any, rows_before: int, missing: str) -> None:
    """Refuses the first value in `batch` that training cannot take: missing, NaN, or text
    that is not UTF-8 (which the JSON reader lets through)."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        fault = _fault(column, missing)
        if fault is not None:
            row = rows_before + fault[0] + 1
            raise InvalidSpec(
                f"row {row}, column {name!r} {fault[1]}", field=f"file.row[{row}].{name}"
            )


def _fault(column: Any, missing: str) -> tuple[int, str] | None:
    """The index of the first bad value in `column`, and what is wrong with it."""
    if column.null_count:
        return int(pc.index(pc.is_null(column), True).as_py()), missing
    if pa.types.is_floating(column.type):
        nan = pc.is_nan(column)
        if pc.any(nan).as_py():
            return int(pc.index(nan, True).as_py()), "is NaN"
    if _is_text(column.type) and not _valid(column):
        index = _first_failing(len(column), lambda k: _valid(column.slice(0, k)))
        return index, "is not valid UTF-8 text"
    return None


def _valid(column: Any) -> bool:
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


class _ParquetOut:
    """The stored file, written a row group at a time: ROW_GROUP_ROWS rows (the last group
    fewer), or fewer where they reach ROW_GROUP_BYTES first. The writer is opened at the
    first batch, when the columns that may hold classes are known (the ones still counted):
    only they are dictionary-encoded. For a column of distinct numbers, dictionary encoding
    takes several times as long as the rest of the write, and gains nothing."""

    def __init__(self, path: Path, schema: Any) -> None:
        self._path, self._schema = path, schema
        self._writer: Any = None
        self._pending: list[Any] = []
        self._rows = self._bytes = 0

    def __enter__(self) -> _ParquetOut:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        if self._writer is None:
            return
        if error is None:
            self._flush()
        self._writer.close()

    def add(self, batch: Any, dictionary: list[str]) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._path, self._schema, use_dictionary=dictionary)
        self._pending.append(batch)
        self._rows += batch.num_rows
        self._bytes += batch.nbytes
        while self._rows >= ROW_GROUP_ROWS:
            table = pa.Table.from_batches(self._pending)
            self._writer.write_table(table.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
            rest = table.slice(ROW_GROUP_ROWS)
            self._pending, self._rows, self._bytes = rest.to_batches(), rest.num_rows, rest.nbytes
        if self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            table = pa.Table.from_batches(self._pending)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._pending, self._rows, self._bytes = [], 0, 0


def _batches_of(batches: Iterable[Any], error: Callable[[Exception], InvalidSpec]) -> Iterator[Any]:
    """`batches`, with a reader's error on the way as the InvalidSpec that `error` makes."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise error(exc) from None
        yield batch


def _misfit(row: int, name: str, shown: str, type_name: str, where: str = "") -> InvalidSpec:
    """A value at `row` that is not of its column's type (`where` says the row otherwise)."""
    what = _WHAT.get(type_name) or ("a number" if type_name.startswith("float") else "an integer")
    return InvalidSpec(
        f"{where or f'row {row}'}, column {name!r}: {shown} is not {what} (the column holds "
        f"{type_name} values from its first rows)",
        field=f"file.row[{row}].{name}",
    )


# CSV


class _RaggedRows:
    """pyarrow's handler of rows with too few or too many values: it keeps the first one,
    so that the error can name it."""

    def __init__(self) -> None:
        self.first: Any = None

    def __call__(self, row: Any) -> str:
        self.first = self.first or row
        return "error"

    def error(self) -> InvalidSpec:
        # pyarrow counts the header as a record (and knows the count only when it reads
        # with one thread, as _open_csv does); our rows are data rows.
        row = self.first.number - 1
        return InvalidSpec(
            f"row {row} has another number of values than the header has columns "
            f"({self.first.actual_columns}, not {self.first.expected_columns})",
            field=f"file.row[{row}]",
        )


def _open_csv(src: Path, ragged: _RaggedRows, **convert: Any) -> Any:
    """A streaming reader. Single-threaded, so that pyarrow knows a ragged row's number;
    quoted values may span lines; only an empty cell is missing (``NA`` in a number
    column is not a number, ``nan`` is NaN)."""
    return pcsv.open_csv(
        src,
        read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=ragged),
        convert_options=pcsv.ConvertOptions(null_values=[""], **convert),
    )


def _csv_batches(src: Path) -> tuple[Any, Iterator[Any]]:
    ragged = _RaggedRows()
    try:
        reader = _open_csv(src, ragged)
        # Dates and times stay text: no feature, but no reason to refuse the file either.
        text = {f.name: pa.string() for f in reader.schema if pa.types.is_temporal(f.type)}
        if text:
            reader = _open_csv(src, ragged, column_types=text)
    except pa.ArrowInvalid as exc:
        raise ragged.error() if ragged.first else _unreadable("CSV", exc) from None
    _check_names(reader.schema.names)
    for field in reader.schema:
        # pyarrow reads a column as bytes when its first block is not all UTF-8.
        if pa.types.is_binary(field.type):
            raise _csv_misfit(src, field.name, pa.string()) or InvalidSpec(
                f"column {field.name!r} is not valid UTF-8 text", field=f"file.{field.name}"
            )
    return reader.schema, _batches_of(
        reader, lambda exc: _csv_error(src, reader.schema, ragged, exc)
    )


def _csv_error(src: Path, schema: Any, ragged: _RaggedRows, exc: Exception) -> InvalidSpec:
    """The error for a block pyarrow could not read: a ragged row, or a value that does not
    convert to its column's type (pyarrow names the column, but not the row: that is found
    by reading the column again)."""
    if ragged.first:
        return ragged.error()
    column = re.search(r"In CSV column #(\d+)", str(exc))
    if column:
        field = schema.field(int(column[1]))
        return _csv_misfit(src, field.name, field.type) or _unreadable("CSV", exc)
    return _unreadable("CSV", exc)


def _csv_misfit(src: Path, name: str, dtype: Any) -> InvalidSpec | None:
    """The first value in column `name` that is not of type `dtype`, found by reading the
    column again as bytes; None if every value converts."""
    reader = _open_csv(
        src,
        _RaggedRows(),
        column_types={name: pa.binary()},
        include_columns=[name],
        strings_can_be_null=True,
    )
    rows = 0
    for batch in reader:
        index = _first_misfit(batch.column(0), dtype)
        if index is not None:
            row = rows + index + 1
            if _is_text(dtype):
                return InvalidSpec(
                    f"row {row}, column {name!r} is not valid UTF-8 text",
                    field=f"file.row[{row}].{name}",
                )
            shown = repr(batch.column(0)[index].as_py().decode(errors="replace"))
            return _misfit(row, name, shown, _type_name(dtype))
        rows += batch.num_rows
    return None


def _first_misfit(column: Any, dtype: Any) -> int | None:
    """The index of the first value of `column` (bytes) that does not convert to `dtype`."""
    if _converts(column, dtype):
        return None
    return _first_failing(len(column), lambda k: _converts(column.slice(0, k), dtype))


def _converts(column: Any, dtype: Any) -> bool:
    try:
        pc.cast(pc.cast(column, pa.string()), dtype)
    except pa.ArrowInvalid:
        return False
    return True


def _unreadable(kind: str, detail: object) -> InvalidSpec:
    return InvalidSpec(f"the {kind} file cannot be read: {detail}", field="file")


# JSON Lines


def _json_batches(src: Path) -> tuple[Any, Iterator[Any]]:
    try:
        reader = pjson.open_json(src, read_options=pjson.ReadOptions(block_size=BLOCK_BYTES))
    except _READ_ERRORS as exc:
        raise _json_fault(src, None) or _unreadable("JSON Lines", exc) from None

    def error(exc: Exception) -> InvalidSpec:
        return _json_fault(src, reader.schema) or _unreadable("JSON Lines", exc)

    return reader.schema, _batches_of(reader, error)


def _json_fault(src: Path, schema: Any) -> InvalidSpec | None:
    """The first line that pyarrow's reader failed on, found by reading the lines again
    with Python (pyarrow names a row only within its block, if at all). `schema` holds the
    types that the first block fixed; None when that block itself failed, and then the
    types are learnt from the lines as pyarrow does. None if no line is at fault."""
    types: dict[str, str | None] = {}
    if schema is not None:
        types = {f.name: None if pa.types.is_null(f.type) else _type_name(f.type) for f in schema}
    row = 0
    with src.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row += 1
            where = f"row {row}" if row == number else f"row {row} (line {number})"
            try:
                _check_json_record(_json_record(line, row, where), types, schema, row, where)
            except InvalidSpec as fault:
                return fault
    return None


def _json_record(line: bytes, row: int, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line, object_pairs_hook=_no_key_twice)
    except ValueError as exc:  # UnicodeDecodeError too
        raise InvalidSpec(f"{where} is not valid JSON: {exc}", field=f"file.row[{row}]") from None
    if not isinstance(record, dict):
        raise InvalidSpec(f"{where} is not a JSON object", field=f"file.row[{row}]")
    return record


def _no_key_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) < len(pairs):
        twice = next(key for key, _ in pairs if [k for k, _ in pairs].count(key) > 1)
        raise ValueError(f"the key {twice!r} appears twice")
    return record


def _check_json_record(
    record: dict[str, Any], types: dict[str, str | None], schema: Any, row: int, where: str
) -> None:
    """Refuses a value that is missing or of another type than its column's; with no
    `schema`, learns the types as it goes (an integer column takes a float, as in pyarrow)."""
    for name in types if schema is not None else record:
        value = record.get(name)
        if value is None:
            raise InvalidSpec(
                f"{where}, column {name!r} is null or missing", field=f"file.row[{row}].{name}"
            )
        kind, expected = _json_type(value), types.get(name)
        if expected is None or (schema is None and (expected, kind) == ("int64", "float64")):
            types[name] = kind
        elif kind != expected and not (expected.startswith("float") and kind == "int64"):
            raise _misfit(row, name, json.dumps(value), expected, where)
    unexpected = next((name for name in record if name not in types), None)
    if unexpected is not None:
        raise InvalidSpec(
            f"{where} has a column {unexpected!r} that the first rows do not have",
            field=f"file.row[{row}].{unexpected}",
        )


def _json_type(value: Any) -> str:
    """A JSON value's type, by the name of the column type pyarrow gives it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    return "string" if isinstance(value, str) else "nested"


# Parquet: read a batch at a time and written again, which decodes (and so checks) every
# value, and gives the stored file our row groups and plain types whatever wrote the upload.


def _parquet_batches(src: Path) -> tuple[Any, Iterator[Any]]:
    try:
        file = pq.ParquetFile(src)
    except _READ_ERRORS as exc:
        raise InvalidSpec(
            f"the file is not a Parquet file, or a corrupt one: {exc}", field="file"
        ) from None
    batches = file.iter_batches(batch_size=_PARQUET_BATCH_ROWS)
    return file.schema_arrow, _batches_of(batches, lambda exc: _unreadable("Parquet", exc))


# Each gives the table's schema, fixed by its first block, and its record batches, which
# raise InvalidSpec where the file turns out bad.
_TABLE_READERS: dict[str, Callable[[Path], tuple[Any, Iterator[Any]]]] = {
    "csv": _csv_batches,
    "jsonl": _json_batches,
    "parquet": _parquet_batches,
}


# Arrays: npy, and npz (a zip of npy files). Both are read through numpy's own header
# parser and then a chunk at a time: an npz member may be compressed, so it cannot be
# memory-mapped, and one way for both is less code. Nothing is ever unpickled.

_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


class _Header(NamedTuple):
    name: str
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype[Any]

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def column(self) -> dict[str, Any]:
        type_name = "string" if self.dtype.kind == "U" else self.dtype.name
        return {"name": self.name, "type": type_name, "shape": list(self.shape[1:])}

    @property
    def countable(self) -> bool:
        return len(self.shape) == 1 and self.dtype.kind in "biuU"


def _inspect_npy(src: Path, label: str | None) -> _Contents:
    _check_label(label, ["data"])
    with src.open("rb") as stream:
        header = _npy_header("data", stream)
        tally = _Tally(["data"] if header.countable else [])
        _scan_array(header, stream, tally)
    return _Contents(header.rows, [header.column], tally.result())


def _inspect_npz(src: Path, label: str | None) -> _Contents:
    """Every array's header first, so that arrays of different lengths are refused before
    any is read through."""
    try:
        with zipfile.ZipFile(src) as archive:
            members = archive.infolist()
            names = _array_names(member.filename for member in members)
            _check_label(label, names)
            headers = []
            for name, member in zip(names, members, strict=True):
                with archive.open(member) as stream:
                    headers.append(_npy_header(name, stream))
            _check_lengths(headers)
            tally = _Tally(h.name for h in headers if h.countable)
            for header, member in zip(headers, members, strict=True):
                with archive.open(member) as stream:
                    _npy_header(header.name, stream)
                    _scan_array(header, stream, tally)
    except _ZIP_ERRORS as exc:
        raise InvalidSpec(
            f"the file is not an npz archive, or a corrupt one: {exc}", field="file"
        ) from None
    return _Contents(headers[0].rows, [h.column for h in headers], tally.result())


def _array_names(filenames: Iterable[str]) -> list[str]:
    names = []
    for filename in filenames:
        if not filename.endswith(".npy"):
            raise InvalidSpec(
                f"the npz archive holds {filename!r}, which is no .npy array", field="file"
            )
        names.append(filename.removesuffix(".npy"))
    if not names:
        raise InvalidSpec("the npz archive holds no arrays", field="file")
    _check_names(names)
    return names


def _check_lengths(headers: list[_Header]) -> None:
    first = headers[0]
    for header in headers[1:]:
        if header.rows != first.rows:
            raise InvalidSpec(
                f"array {header.name!r} has {header.rows} rows and {first.name!r} has "
                f"{first.rows}: every array needs the same length along its first axis",
                field=f"file.{header.name}",
            )


def _npy_header(name: str, stream: IO[bytes]) -> _Header:
    """The header of the .npy array that `stream` is at the start of; refuses one that
    holds no accepted type, or no rows."""
    field = f"file.{name}"
    try:
        version = np.lib.format.read_magic(stream)
        read = _NPY_HEADERS.get(version)
        if read is None:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not accepted")
        header = _Header(name, *read(stream))
    except ValueError as exc:
        raise InvalidSpec(f"array {name!r} is not a valid .npy array: {exc}", field=field) from None
    dtype = header.dtype
    if dtype.hasobject:
        raise InvalidSpec(
            f"array {name!r} holds Python objects; only numeric, boolean and string arrays are "
            "accepted",
            field=field,
        )
    if dtype.kind not in "biufU" or dtype.itemsize == 0:
        raise InvalidSpec(
            f"array {name!r} holds {dtype} values; only numeric, boolean and string arrays are "
            "accepted",
            field=field,
        )
    if not header.shape:
        raise InvalidSpec(f"array {name!r} is a single value, with no axis of rows", field=field)
    if header.rows == 0:
        raise InvalidSpec(f"array {name!r} has no rows", field=field)
    return header


def _scan_array(header: _Header, stream: IO[bytes], tally: _Tally) -> None:
    """Reads the array's values a chunk at a time: refuses a NaN, or a file cut short or
    with bytes past the array's end, and counts the values of a countable array."""
    dtype, total = header.dtype, math.prod(header.shape)
    step = max(1, _ARRAY_CHUNK_BYTES // dtype.itemsize)
    done = 0
    while done < total:
        count = min(step, total - done)
        data = stream.read(count * dtype.itemsize)
        if len(data) < count * dtype.itemsize:
            raise InvalidSpec(
                f"array {header.name!r} is cut short: the file ends before its values do",
                field=f"file.{header.name}",
            )
        values = np.frombuffer(data, dtype)
        if dtype.kind == "f":
            _check_no_nan(header, values, done)
        if header.name in tally.names():
            uniques, counts = np.unique(values, return_counts=True)
            tally.add(header.name, uniques.tolist(), counts.tolist())
        done += count
    if stream.read(1):
        raise InvalidSpec(
            f"array {header.name!r} has bytes past the end of its values",
            field=f"file.{header.name}",
        )


def _check_no_nan(header: _Header, values: np.ndarray[Any, Any], done: int) -> None:
    """Refuses a NaN in `values`, the flat values of the array from index `done` on."""
    nan = np.flatnonzero(np.isnan(values))
    if nan.size:
        index = done + int(nan[0])
        per_row = math.prod(header.shape[1:])
        row = (index % header.rows if header.fortran_order else index // per_row) + 1
        raise InvalidSpec(
            f"array {header.name!r} holds NaN at row {row}", field=f"file.{header.name}"
        )
