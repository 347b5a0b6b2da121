"""Uploaded data sets: each format stored and read back as it was, each refusal naming its
place, nothing left behind by a refused file, and memory bounded on a CSV of millions of
rows. Blocks and row groups are made small here, so that small files span many of them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from shared import ingest as ingest_module
from shared.errors import InvalidSpec
from shared.formats import FORMATS, format_of
from shared.ingest import ingest
from tests.helpers import ROOT


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred rows make several blocks and row groups."""
    monkeypatch.setattr(ingest_module, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(ingest_module, "ROW_GROUP_ROWS", 100)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where the stored file goes: a folder of its own, to see that nothing else is left."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _upload(tmp_path: Path, name: str, content: bytes | Callable[[Path], Any]) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
    return path


@pytest.mark.parametrize(
    ("fmt", "content_type", "filename", "expected"),
    [
        ("NPZ", "text/csv", "a.csv", "npz"),
        (None, "text/csv; charset=utf-8", "a.parquet", "csv"),
        (None, "application/x-parquet", None, "parquet"),
        (None, "application/x-ndjson", None, "jsonl"),
        (None, "application/octet-stream", "data.PQ", "parquet"),
        (None, None, "dir/x.ndjson", "jsonl"),
        ("", "application/json", "x.npy", "npy"),
    ],
)
def test_the_format_is_given_else_its_content_type_says_else_its_name(
    fmt: str | None, content_type: str | None, filename: str | None, expected: str
) -> None:
    assert format_of(fmt, content_type, filename) == expected


@pytest.mark.parametrize(
    ("fmt", "content_type", "filename"),
    [("xlsx", None, "a.csv"), (None, "application/octet-stream", "data"), (None, None, None)],
)
def test_a_format_nothing_decides_is_refused_naming_the_accepted_ones(
    fmt: str | None, content_type: str | None, filename: str | None
) -> None:
    with pytest.raises(InvalidSpec) as info:
        format_of(fmt, content_type, filename)
    assert info.value.field == "format"
    assert ", ".join(FORMATS) in info.value.detail


def _stored(result: Any, dest: Path) -> None:
    """The description's hash and size are the stored file's."""
    assert result.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert result.bytes == dest.stat().st_size


def test_a_csv_is_stored_as_parquet_in_row_groups_with_its_values_and_order(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "MAX_CLASSES", 20)
    n = 1050
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "price": pa.array([i / 4 for i in range(n)], pa.float64()),
            "kind": pa.array([["", "b", "a"][i % 3] for i in range(n)], pa.string()),
            "ok": pa.array([i % 2 == 0 for i in range(n)], pa.bool_()),
            "day": pa.array([f"2024-01-{1 + i % 28:02d}" for i in range(n)], pa.string()),
        }
    )
    pcsv.write_csv(table, tmp_path / "up.csv")
    result = ingest(tmp_path / "up.csv", "csv", out / "set.parquet", label="kind")
    stored = pq.ParquetFile(out / "set.parquet")
    assert stored.read().equals(table)  # the dates stay text
    sizes = [stored.metadata.row_group(i).num_rows for i in range(stored.num_row_groups)]
    assert sizes == [100] * 10 + [50]
    assert (result.format, result.rows) == ("parquet", n)
    assert result.columns == [
        {"name": "id", "type": "int64"},
        {"name": "price", "type": "float64"},
        {"name": "kind", "type": "string"},
        {"name": "ok", "type": "bool"},
        {"name": "day", "type": "string"},
    ]
    # id and day have more than MAX_CLASSES values; price is no class.
    assert result.value_counts == {
        "kind": {"": 350, "a": 350, "b": 350},
        "ok": {"False": 525, "True": 525},
    }
    _stored(result, out / "set.parquet")
    assert [p.name for p in out.iterdir()] == ["set.parquet"]


def test_class_counts_are_in_the_values_order(tmp_path: Path, out: Path) -> None:
    src = _upload(tmp_path, "up.csv", b"y\n10\n2\n10\n-1\n")
    result = ingest(src, "csv", out / "set.parquet")
    assert list(result.value_counts["y"].items()) == [("-1", 1), ("2", 1), ("10", 2)]


def test_json_lines_are_stored_as_parquet(tmp_path: Path, out: Path) -> None:
    lines = [json.dumps({"x": i * 0.5, "n": i, "t": f"w{i % 2}"}) for i in range(300)]
    lines.insert(7, "")  # a blank line is no row
    src = _upload(tmp_path, "up.jsonl", "\n".join(lines).encode())
    result = ingest(src, "jsonl", out / "set.parquet")
    assert pq.read_table(out / "set.parquet").to_pydict() == {
        "x": [i * 0.5 for i in range(300)],
        "n": list(range(300)),
        "t": [f"w{i % 2}" for i in range(300)],
    }
    assert result.rows == 300
    assert result.columns == [
        {"name": "x", "type": "float64"},
        {"name": "n", "type": "int64"},
        {"name": "t", "type": "string"},
    ]
    assert result.value_counts == {
        "n": {str(i): 1 for i in range(300)},
        "t": {"w0": 150, "w1": 150},
    }


def test_a_parquet_upload_is_rewritten_with_plain_types_and_our_row_groups(
    tmp_path: Path, out: Path
) -> None:
    n = 250
    table = pa.table(
        {
            "i": pa.array(range(n), pa.int32()),
            "f": pa.array([i / 8 for i in range(n)], pa.float32()),
            "s": pa.array([f"s{i % 4}" for i in range(n)], pa.large_string()),
            "c": pa.array([f"c{i % 2}" for i in range(n)]).dictionary_encode(),
            "b": pa.array([i % 3 == 0 for i in range(n)]),
        }
    )
    pq.write_table(table, tmp_path / "up.parquet", row_group_size=7)
    result = ingest(tmp_path / "up.parquet", "parquet", out / "set.parquet")
    stored = pq.ParquetFile(out / "set.parquet")
    expected = table.cast(
        pa.schema(
            [
                ("i", pa.int32()),
                ("f", pa.float32()),
                ("s", pa.string()),
                ("c", pa.string()),
                ("b", pa.bool_()),
            ]
        )
    )
    assert stored.read().equals(expected)
    assert stored.num_row_groups == 3
    assert [c["type"] for c in result.columns] == ["int32", "float32", "string", "string", "bool"]
    assert result.value_counts["c"] == {"c0": 125, "c1": 125}
    _stored(result, out / "set.parquet")


def test_an_npy_is_stored_as_it_came(tmp_path: Path, out: Path) -> None:
    images = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    np.save(tmp_path / "up.npy", images)
    result = ingest(tmp_path / "up.npy", "npy", out / "set.npy")
    assert (out / "set.npy").read_bytes() == (tmp_path / "up.npy").read_bytes()
    np.testing.assert_array_equal(np.load(out / "set.npy"), images)
    assert (result.format, result.rows) == ("npy", 5)
    assert result.columns == [{"name": "data", "type": "float32", "shape": [4, 3]}]
    assert result.value_counts == {}
    _stored(result, out / "set.npy")


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_an_npz_is_stored_as_it_came_and_its_1d_classes_counted(
    tmp_path: Path, out: Path, save: Callable[..., None]
) -> None:
    arrays = {
        "x": np.ones((6, 2, 2), np.float64),
        "y": np.array([3, 1, 3, 3, 1, 0], np.int16),
        "name": np.array(["b", "a", "b", "b", "a", "c"]),
        "flag": np.array([[True], [False]] * 3),
    }
    save(tmp_path / "up.npz", **arrays)
    result = ingest(tmp_path / "up.npz", "npz", out / "set.npz", label="y")
    assert (out / "set.npz").read_bytes() == (tmp_path / "up.npz").read_bytes()
    with np.load(out / "set.npz", allow_pickle=False) as stored:
        for name, array in arrays.items():
            np.testing.assert_array_equal(stored[name], array)
    assert result.rows == 6
    assert result.columns == [
        {"name": "x", "type": "float64", "shape": [2, 2]},
        {"name": "y", "type": "int16", "shape": []},
        {"name": "name", "type": "string", "shape": []},
        {"name": "flag", "type": "bool", "shape": [1]},
    ]
    assert result.value_counts == {
        "y": {"0": 1, "1": 2, "3": 3},
        "name": {"a": 2, "b": 3, "c": 1},
    }
    _stored(result, out / "set.npz")


def test_a_stored_file_replaces_the_one_before(tmp_path: Path, out: Path) -> None:
    (out / "set.parquet").write_bytes(b"old")
    ingest(_upload(tmp_path, "up.csv", b"a\n1\n"), "csv", out / "set.parquet")
    assert pq.read_table(out / "set.parquet").to_pydict() == {"a": [1]}


def _rows(n: int) -> bytes:
    """A CSV of `n` good rows: a holds integers, b text. Past the 1 KiB first block."""
    return b"a,b\n" + b"".join(b"%d,x%d\n" % (i, i % 3) for i in range(n))


def _jsonl(n: int) -> bytes:
    return b"".join(b'{"a": %d, "b": "x"}\n' % i for i in range(n))


def _parquet(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path, row_group_size=50)


def _npy(array: Any) -> Callable[[Path], None]:
    return lambda path: np.save(path, array, allow_pickle=True)


def _npz(**arrays: Any) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _corrupt_parquet(path: Path) -> None:
    pq.write_table(pa.table({"a": range(10_000), "b": [f"s{i}" for i in range(10_000)]}), path)
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes(2000) + data[2100:])


def _zip(members: dict[str, bytes]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)

    return write


def _cut_short_npy(path: Path) -> None:
    np.save(path, np.zeros((100, 3)))
    path.write_bytes(path.read_bytes()[:-8])


def _bad_crc_npz(path: Path) -> None:
    np.savez(path, x=np.arange(1000))
    data = bytearray(path.read_bytes())
    data[500] ^= 0xFF  # inside x's values, stored uncompressed
    path.write_bytes(bytes(data))


REFUSED: list[tuple[str, str, bytes | Callable[[Path], Any], str, str]] = [
    # (id, format, file, field, a part of the detail)
    ("csv-header-only", "csv", b"a,b\n", "file", "no rows"),
    (
        "csv-ragged",
        "csv",
        b"a,b\n1,2\n3\n",
        "file.row[2]",
        "row 2 has another number of values than the header has columns (1, not 2)",
    ),
    (
        "csv-ragged-late",
        "csv",
        _rows(500) + b"1,x,3\n",
        "file.row[501]",
        "row 501 has another number of values",
    ),
    ("csv-ragged-after-a-quoted-newline", "csv", b'a,b\n1,"x\ny"\n2\n', "file.row[2]", "row 2 "),
    (
        "csv-text-in-integers",
        "csv",
        _rows(500) + b"abc,x\n",
        "file.row[501].a",
        "row 501, column 'a': 'abc' is not an integer (the column holds int64 values",
    ),
    (
        "csv-text-in-floats",
        "csv",
        b"p\n" + b"1.5\n" * 400 + b"N/A\n",
        "file.row[401].p",
        "'N/A' is not a number (the column holds float64 values from its first rows)",
    ),
    (
        "csv-empty-cell",
        "csv",
        _rows(500) + b",x\n",
        "file.row[501].a",
        "row 501, column 'a' is empty",
    ),
    ("csv-nan", "csv", b"p\n1.5\nnan\n", "file.row[2].p", "row 2, column 'p' is NaN"),
    ("csv-empty-column", "csv", b"a,b\n1,\n2,\n", "file.row[1].b", "column 'b' is empty"),
    ("csv-names-twice", "csv", b"a,b,a\n1,2,3\n", "file.a", "'a' is used twice"),
    ("csv-bad-utf8", "csv", b"a,b\n1,x\n2,\xff\n", "file.row[2].b", "not valid UTF-8"),
    ("csv-bad-utf8-late", "csv", _rows(500) + b"1,\xffx\n", "file.row[501].b", "not valid UTF-8"),
    (
        "jsonl-malformed",
        "jsonl",
        _jsonl(300) + b"\n" + b'{"a": 1, "b": }\n',
        "file.row[301]",
        "row 301 (line 302) is not valid JSON",
    ),
    (
        "jsonl-float-in-integers",
        "jsonl",
        _jsonl(300) + b'{"a": 1.5, "b": "y"}\n',
        "file.row[301].a",
        "1.5 is not an integer (the column holds int64 values from its first rows)",
    ),
    ("jsonl-text-in-numbers", "jsonl", b'{"a": 1}\n{"a": "x"}\n', "file.row[2].a", "is not an"),
    ("jsonl-null", "jsonl", _jsonl(300) + b'{"a": null, "b": "y"}\n', "file.row[301].a", "null"),
    ("jsonl-missing-key", "jsonl", b'{"a": 1, "b": "x"}\n{"a": 2}\n', "file.row[2].b", "missing"),
    (
        "jsonl-new-key",
        "jsonl",
        _jsonl(300) + b'{"a": 1, "b": "y", "c": 2}\n',
        "file.row[301].c",
        "'c'",
    ),
    ("jsonl-nested", "jsonl", b'{"a": [1, 2], "b": "x"}\n', "file.a", "column 'a' holds list"),
    ("jsonl-not-an-object", "jsonl", b'{"a": 1}\n[1]\n', "file.row[2]", "not a JSON object"),
    ("jsonl-key-twice", "jsonl", b'{"a": 1, "a": 2}\n', "file.row[1]", "'a' appears twice"),
    ("jsonl-bad-utf8", "jsonl", b'{"a": "\xff"}\n', "file.row[1].a", "not valid UTF-8"),
    ("parquet-not-parquet", "parquet", _rows(3), "file", "not a Parquet file"),
    ("parquet-corrupt-page", "parquet", _corrupt_parquet, "file", "Parquet file cannot be read"),
    (
        "parquet-null",
        "parquet",
        _parquet(pa.table({"a": [1] * 120 + [None, 2]})),
        "file.row[121].a",
        "row 121, column 'a' is null",
    ),
    (
        "parquet-timestamps",
        "parquet",
        _parquet(pa.table({"t": pa.array([0], pa.timestamp("s"))})),
        "file.t",
        "holds timestamp",
    ),
    (
        "parquet-structs",
        "parquet",
        _parquet(pa.table({"a": [1], "s": [{"x": 1}]})),
        "file.s",
        "holds struct",
    ),
    (
        "parquet-no-rows",
        "parquet",
        _parquet(pa.table({"a": pa.array([], pa.int64())})),
        "file",
        "no rows",
    ),
    (
        "npy-objects",
        "npy",
        _npy(np.array([{}, 1], dtype=object)),
        "file.data",
        "holds Python objects",
    ),
    ("npy-not-npy", "npy", _rows(3), "file.data", "not a valid .npy array"),
    (
        "npy-cut-short",
        "npy",
        _cut_short_npy,
        "file.data",
        "cut short",
    ),
    ("npy-nan", "npy", _npy(np.array([[1.0, 2.0], [3.0, np.nan]])), "file.data", "NaN at row 2"),
    ("npy-scalar", "npy", _npy(np.float32(1.0)), "file.data", "no axis of rows"),
    ("npy-complex", "npy", _npy(np.zeros(3, np.complex64)), "file.data", "holds complex64"),
    ("npz-lengths", "npz", _npz(x=np.ones((4, 2)), y=np.arange(3)), "file.y", "has 3 rows"),
    ("npz-objects", "npz", _npz(x=np.ones(2), o=np.array([None, 1])), "file.o", "Python objects"),
    ("npz-not-zip", "npz", _rows(3), "file", "not an npz archive"),
    ("npz-not-npy", "npz", _zip({"x.txt": b"1"}), "file", "'x.txt', which is no .npy array"),
    ("npz-bad-crc", "npz", _bad_crc_npz, "file", "corrupt"),
]


@pytest.mark.parametrize(
    ("fmt", "content", "field", "detail"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_a_refused_file_names_where_and_leaves_nothing(
    tmp_path: Path,
    out: Path,
    fmt: str,
    content: bytes | Callable[[Path], Any],
    field: str,
    detail: str,
) -> None:
    src = _upload(tmp_path, f"up.{fmt}", content)
    with pytest.raises(InvalidSpec) as info:
        ingest(src, fmt, out / "set")
    assert (info.value.field, info.value.status) == (field, 422)
    assert detail in info.value.detail
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_file_is_refused(tmp_path: Path, out: Path, fmt: str) -> None:
    with pytest.raises(InvalidSpec, match="the file is empty") as info:
        ingest(_upload(tmp_path, "up", b""), fmt, out / "set")
    assert info.value.field == "file"


@pytest.mark.parametrize(
    ("fmt", "content"),
    [("csv", b"a,b\n1,2\n"), ("npz", _npz(x=np.ones(2), y=np.ones(2)))],
)
def test_a_label_that_names_no_column_is_refused_naming_those_there_are(
    tmp_path: Path, out: Path, fmt: str, content: bytes | Callable[[Path], Any]
) -> None:
    with pytest.raises(InvalidSpec) as info:
        ingest(_upload(tmp_path, f"up.{fmt}", content), fmt, out / "set", label="c")
    assert info.value.field == "label"
    assert "'c'" in info.value.detail
    assert "'x', 'y'" in info.value.detail or "'a', 'b'" in info.value.detail


def test_a_label_with_a_missing_value_is_refused(tmp_path: Path, out: Path) -> None:
    src = _upload(tmp_path, "up.csv", b"x,y\n1,0\n2,\n")
    with pytest.raises(InvalidSpec, match="row 2, column 'y' is empty") as info:
        ingest(src, "csv", out / "set", label="y")
    assert info.value.field == "file.row[2].y"


def test_an_unknown_format_is_refused(tmp_path: Path, out: Path) -> None:
    with pytest.raises(InvalidSpec) as info:
        ingest(_upload(tmp_path, "up", b"a\n1\n"), "xlsx", out / "set")
    assert info.value.field == "format"


# The bounded-memory check runs in a process of its own, so that its peaks are the ingest's.
_MEASURE = """
import json, resource, sys
from pathlib import Path
import pyarrow as pa
from shared.ingest import ingest

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = ingest(Path(sys.argv[1]), "csv", Path(sys.argv[2]))
print(json.dumps({
    "rows": result.rows,
    "arrow_peak": pa.default_memory_pool().max_memory(),
    "rss_growth": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024,
}))
"""


@pytest.mark.slow
def test_a_csv_of_millions_of_rows_is_stored_in_bounded_memory(tmp_path: Path) -> None:
    rows, columns, chunk = 2_500_000, 20, 250_000
    names = [f"c{i}" for i in range(columns)]
    schema = pa.schema([(n, pa.float64() if i % 2 else pa.int64()) for i, n in enumerate(names)])
    rng = np.random.default_rng(0)
    with pcsv.CSVWriter(tmp_path / "big.csv", schema) as writer:
        for _ in range(rows // chunk):
            values = [
                rng.random(chunk) if i % 2 else rng.integers(0, 10 if i == 0 else 10**6, chunk)
                for i in range(columns)
            ]
            writer.write_table(pa.table(dict(zip(names, values, strict=True)), schema=schema))
    in_memory = rows * columns * 8  # 400 MB as Arrow columns
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "big.csv"), str(tmp_path / "set.parquet")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    measured = json.loads(done.stdout)
    assert measured["rows"] == rows
    assert measured["arrow_peak"] < in_memory / 4, measured
    assert measured["rss_growth"] < in_memory / 2, measured
    assert pq.ParquetFile(tmp_path / "set.parquet").metadata.num_rows == rows
