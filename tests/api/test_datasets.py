"""Data sets over HTTP: upload each format, describe, list, own, refuse what is malformed
(naming where), leave nothing behind, and keep every job response small."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.artifacts import open_store
from shared.db import keys
from shared.db.session import session_scope
from shared.processes import free_port
from tests.helpers import ADMIN_KEY, unique
from tests.test_import_rules import serving

CSV = b"a,b,label\n1.5,2,x\n3.0,4,y\n5.25,6,x\n"


def _upload(
    client: Any, name: str, body: bytes, content_type: str = "text/csv", **params: str
) -> Any:
    return client.post(
        "/v1/datasets",
        params={"name": name, **params},
        content=body,
        headers={"Content-Type": content_type},
    )


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _stored_files() -> set[str]:
    """Every file under the store's data sets and the uploads' scratch directory."""
    some_key = open_store().local_path("x")
    assert some_key is not None
    found = set()
    for sub in ("datasets", ".incoming"):
        found |= {p.name for p in (some_key.parent / sub).rglob("*") if p.is_file()}
    return found


FORMATS: list[tuple[str, Callable[[], bytes], str, int, list[str]]] = [
    ("csv", lambda: CSV, "text/csv", 3, ["a", "b", "label"]),
    (
        "parquet",
        lambda: _parquet(pa.table({"a": [1.0, 2.0], "label": ["x", "y"]})),
        "application/vnd.apache.parquet",
        2,
        ["a", "label"],
    ),
    (
        "jsonl",
        lambda: b'{"a": 1.5, "label": 1}\n{"a": 2.5, "label": 0}\n',
        "application/x-ndjson",
        2,
        ["a", "label"],
    ),
    ("npy", lambda: _npy(np.ones((4, 3), np.float32)), "application/octet-stream", 4, ["data"]),
    (
        "npz",
        lambda: _npz(x=np.zeros((5, 2, 2), np.float32), y=np.arange(5)),
        "application/octet-stream",
        5,
        ["x", "y"],
    ),
]


@pytest.mark.parametrize(("fmt", "make", "content_type", "rows", "columns"), FORMATS)
def test_each_format_is_stored_and_described(
    api_client: Any,
    fmt: str,
    make: Callable[[], bytes],
    content_type: str,
    rows: int,
    columns: list[str],
) -> None:
    name = unique(f"up-{fmt}")
    params = {"filename": f"data.{fmt}"} if content_type == "application/octet-stream" else {}
    response = _upload(api_client, name, make(), content_type, **params)
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["version"] == 1 and version["rows"] == rows
    assert [c["name"] for c in version["columns"]] == columns
    assert version["created_by"] == "bootstrap" and len(version["sha256"]) == 64
    assert version["format"] == ("parquet" if fmt in ("csv", "jsonl", "parquet") else fmt)

    again = _upload(api_client, name, make(), content_type, **params).json()
    assert again["version"] == 2
    shown = api_client.get(f"/v1/datasets/{name}").json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["latest_version"] == 2
    latest = api_client.get(f"/v1/datasets/{name}/versions/latest").json()
    assert latest == again
    listed = api_client.get("/v1/datasets", params={"limit": 500}).json()
    assert name in {d["name"] for d in listed["items"]}


def test_a_csv_is_stored_as_parquet_with_its_values_in_order(api_client: Any) -> None:
    version = _upload(api_client, unique("order"), CSV, label="label").json()
    store = open_store()
    stored = pq.read_table(store.local_path(store.key_of(version["uri"])))
    assert stored.to_pydict() == {
        "a": [1.5, 3.0, 5.25],
        "b": [2, 4, 6],
        "label": ["x", "y", "x"],
    }
    assert version["value_counts"]["label"] == {"x": 2, "y": 1}


MALFORMED = [
    (b"a,b\n1,2\n3\n5,6\n", "row 2"),  # ragged
    # Text among numbers, past the first block (1 MiB) that decides the columns' types.
    (b"a,b\n1,2\n3,4\n" + b"5,6\n" * 300_000 + b"seven,8\n", "row 300003"),
    (b"", "empty"),
]


@pytest.mark.parametrize(("body", "where"), MALFORMED)
def test_a_malformed_csv_is_refused_naming_where_and_leaves_nothing(
    api_client: Any, body: bytes, where: str
) -> None:
    name = unique("bad")
    before = _stored_files()
    response = _upload(api_client, name, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["type"] == "invalid_spec" and error["field"]
    assert where in error["detail"], error
    assert api_client.get(f"/v1/datasets/{name}").status_code == 404
    assert _stored_files() == before


def test_a_missing_label_column_is_refused_naming_it(api_client: Any) -> None:
    response = _upload(api_client, unique("nolabel"), CSV, label="price")
    assert response.status_code == 422
    assert response.json()["field"] == "label"
    assert "price" in response.json()["detail"]


def test_an_unknown_format_names_the_ones_accepted(api_client: Any) -> None:
    response = _upload(api_client, unique("fmt"), CSV, "application/octet-stream")
    assert response.status_code == 422
    assert response.json()["field"] == "format"
    assert "csv" in response.json()["detail"]


def test_an_upload_has_its_own_size_limit(
    api_client: Any, setting: Callable[[str, str], None]
) -> None:
    # A file over the request limit of every other route is accepted here...
    setting("TORCHQUEUE_MAX_REQUEST_MB", "0.001")
    big = b"a,label\n" + b"1.0,1\n2.0,0\n" * 1000
    assert _upload(api_client, unique("big"), big).status_code == 201
    # ... and one over the upload limit is refused, leaving nothing.
    setting("TORCHQUEUE_MAX_DATASET_MB", "0.01")
    before = _stored_files()
    name = unique("huge")
    response = _upload(api_client, name, big)
    assert response.status_code == 413
    assert response.json()["type"] == "too_large"
    assert api_client.get(f"/v1/datasets/{name}").status_code == 404
    assert _stored_files() == before


def _key(*scopes: str) -> dict[str, str]:
    with session_scope() as s:
        _, key = keys.create_key(s, unique("ds"), list(scopes))
    return {"Authorization": f"Bearer {key}"}


def test_a_key_sees_its_own_data_sets_and_admin_all(api_client: Any) -> None:
    alice = _key("datasets:read", "datasets:write")
    bob = _key("datasets:read", "datasets:write")
    name = unique("alice")
    made = api_client.post(
        "/v1/datasets",
        params={"name": name},
        content=CSV,
        headers=alice | {"Content-Type": "text/csv"},
    )
    assert made.status_code == 201 and made.json()["created_by"] != "bootstrap"
    assert api_client.get(f"/v1/datasets/{name}", headers=alice).status_code == 200
    assert api_client.get(f"/v1/datasets/{name}", headers=bob).status_code == 404
    mine = api_client.get("/v1/datasets", headers=bob, params={"limit": 500}).json()
    assert name not in {d["name"] for d in mine["items"]}
    taken = api_client.post(
        "/v1/datasets",
        params={"name": name},
        content=CSV,
        headers=bob | {"Content-Type": "text/csv"},
    )
    assert taken.status_code == 403 and taken.json()["field"] == "name"
    assert api_client.get(f"/v1/datasets/{name}").status_code == 200  # admin
    reader = _key("jobs:submit", "models:write")
    body = {"model_name": unique("m"), "family": "mlp", "dataset": {"name": name, "label": "label"}}
    refused = api_client.post("/v1/jobs/train", json=body, headers=reader)
    assert refused.status_code == 403 and "datasets:read" in refused.json()["detail"]


def test_a_train_job_is_checked_against_the_data_sets_columns(api_client: Any) -> None:
    name = unique("cols")
    _upload(api_client, name, CSV)

    def train(**dataset: Any) -> Any:
        body = {"model_name": unique("m"), "family": "mlp", "dataset": {"name": name, **dataset}}
        return api_client.post("/v1/jobs/train", json=body)

    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"label": "price"}, 422, "dataset.label"),
        ({"label": "a", "features": ["label"]}, 422, "dataset.features[0]"),
        ({"label": "label", "features": ["a", "nope"]}, 422, "dataset.features[1]"),
        ({"label": "label", "text": "a"}, 422, "dataset.text"),
        ({"label": "label", "version": 9}, 404, "dataset.version"),
    ]
    for dataset, status, field in cases:
        response = train(**dataset)
        assert (response.status_code, response.json().get("field")) == (status, field), dataset
    unknown = api_client.post(
        "/v1/jobs/train",
        json={"model_name": "m", "family": "mlp", "dataset": {"name": unique("no"), "label": "y"}},
    )
    assert (unknown.status_code, unknown.json()["field"]) == (404, "dataset.name")
    ok = train(label="label", features=["a", "b"])
    assert ok.status_code == 201, ok.text
    dataset = ok.json()["spec"]["dataset"]
    assert (dataset["name"], dataset["version"], dataset["file"]["format"]) == (name, 1, "parquet")
    assert ok.json()["spec"]["task"] == "classification"
    regression = train(label="a", features=["b"]).json()
    assert regression["spec"]["task"] == "regression"


def test_a_job_with_large_inline_data_answers_small(api_client: Any) -> None:
    rng = np.random.default_rng(0)
    rows = np.round(rng.normal(size=(20_000, 20)), 4).tolist()
    labels = rng.integers(0, 2, size=20_000).tolist()
    model = unique("inline")
    body = {
        "model_name": model,
        "family": "mlp",
        "dataset": {"inline": {"inputs": rows, "labels": labels}},
        "training": {"epochs": 1},
    }
    assert len(json.dumps(body)) > 2_000_000
    made = api_client.post("/v1/jobs/train", json=body)
    assert made.status_code == 201, made.text[:500]
    bound = 4096
    assert len(made.content) < bound
    job = made.json()
    assert len(api_client.get(f"/v1/jobs/{job['id']}").content) < bound
    listed = api_client.get("/v1/jobs", params={"model_name": model})
    assert len(listed.content) < bound
    stored = job["spec"]["dataset"]
    assert stored["name"] == f"inline.{model}" and stored["file"]["source"] == "inline"
    version = api_client.get(f"/v1/datasets/inline.{model}/versions/1").json()
    assert version["rows"] == 20_000 and len(version["columns"]) == 21


def test_url_sources_are_off_until_the_operator_names_prefixes(api_client: Any) -> None:
    response = api_client.post(
        "/v1/datasets", params={"name": unique("url"), "url": "s3://bucket/data.parquet"}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "url"


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("datasets") / "api.log"
    with serving(["api"], free_port(), "/healthz", log) as base:
        yield base


def test_a_client_that_goes_away_midway_leaves_nothing(api_url: str) -> None:
    name = unique("gone")
    before = _stored_files()
    port = int(api_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            f"POST /v1/datasets?name={name} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: text/csv\r\n"
            "Content-Length: 10000000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"a,b\n" + b"1,2\n" * 50_000)
        time.sleep(0.5)
    import httpx

    deadline = time.monotonic() + 10
    while _stored_files() != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stored_files() == before
    answer = httpx.get(
        f"{api_url}/v1/datasets/{name}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert answer.status_code == 404
