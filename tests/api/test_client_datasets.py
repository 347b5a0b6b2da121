"""The Python client's data sets: a file streamed up with its progress, read back through
the API (in process, over HTTP semantics), and a batch prediction's output saved to disk,
from the API or from a store's pre-signed URL."""

from __future__ import annotations

import csv
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from api.client import CHUNK, ApiError, Client
from tests.helpers import unique


def write_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "x1", "x2", "label"])
        for i in range(rows):
            out.writerow([i, round(i * 0.37 % 5, 4), round(i * 0.11 % 3, 4), i % 2])
    return path


def test_an_upload_streams_the_file_and_reports_every_byte(api_client: Any, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "rows.csv", 120_000)  # several chunks
    size = data.stat().st_size
    assert size > 2 * CHUNK
    seen: list[tuple[int, int | None]] = []
    name = unique("upload")
    tq = Client(http=api_client)
    made = tq.upload_dataset(data, name, label="label", progress=lambda *p: seen.append(p))
    assert seen[-1] == (size, size)
    assert [s for s, _ in seen] == sorted({s for s, _ in seen})  # growing, chunk by chunk
    assert len(seen) == -(-size // CHUNK)
    assert (made["name"], made["version"], made["rows"]) == (name, 1, 120_000)
    assert [c["name"] for c in made["columns"]] == ["id", "x1", "x2", "label"]

    again = tq.upload_dataset(data, name)
    assert again["version"] == 2
    assert tq.get_dataset_version(name, "latest")["version"] == 2
    assert [v["version"] for v in tq.get_dataset(name)["versions"]] == [1, 2]
    tq.delete_dataset_version(name, 1)
    with pytest.raises(ApiError) as gone:
        tq.get_dataset_version(name, 1)
    assert gone.value.status == 404


def test_a_file_with_no_known_suffix_is_uploaded_with_its_format_given(
    api_client: Any, tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "rows.txt", 10)
    tq = Client(http=api_client)
    made = tq.upload_dataset(data, unique("txt"), format="csv")
    assert made["rows"] == 10


def test_a_malformed_upload_is_an_error_naming_where(api_client: Any, tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,0\n3,4\n5,6,1\n")
    with pytest.raises(ApiError) as refused:
        Client(http=api_client).upload_dataset(ragged, unique("ragged"))
    assert refused.value.status == 422
    assert "row" in refused.value.detail
    missing = write_csv(tmp_path / "rows.csv", 5)
    with pytest.raises(ApiError) as refused:
        Client(http=api_client).upload_dataset(missing, unique("nolabel"), label="price")
    assert refused.value.status == 422 and "price" in refused.value.detail


# --- a batch prediction's output -----------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    """A stand-in for a store's pre-signed URLs: serves ``files``, records the headers."""

    files: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(403, "Request has expired")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def signed_urls() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        _Files.files.clear()
        _Files.seen.clear()


def _output(tmp_path: Path) -> tuple[pa.Table, bytes]:
    table = pa.table({"id": [7, 8, 9], "label": [1, 0, 1], "p_0": [0.1, 0.8, 0.3]})
    pq.write_table(table, tmp_path / "out.parquet")
    return table, (tmp_path / "out.parquet").read_bytes()


def _api(answer: httpx.Response) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/j1/output"
        return answer

    transport = httpx.MockTransport(handler)
    http = httpx.Client(base_url="http://tq", transport=transport, headers={"Authorization": "k"})
    return Client(http=http)


def test_an_output_behind_a_signed_url_is_fetched_without_the_key(
    signed_urls: str, tmp_path: Path
) -> None:
    table, parquet = _output(tmp_path)
    _Files.files["/bucket/outputs/j1.parquet"] = parquet
    location = f"{signed_urls}/bucket/outputs/j1.parquet?X-Amz-Signature=abc"
    tq = _api(httpx.Response(303, headers={"Location": location}))
    seen: list[tuple[int, int | None]] = []
    saved = tq.download_output(
        "j1", tmp_path / "got" / "preds.parquet", progress=lambda *p: seen.append(p)
    )
    assert pq.read_table(saved).equals(table)
    assert seen[-1] == (len(parquet), len(parquet))
    assert "authorization" not in {k.lower() for k in _Files.seen[0]}
    # Asked for CSV, served the stored Parquet as it is: saved as CSV all the same.
    as_csv = tq.download_output("j1", tmp_path / "preds.csv")
    assert pa_csv.read_csv(as_csv).equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got", "out.parquet", "preds.csv"]


def test_a_failed_download_leaves_no_file(signed_urls: str, tmp_path: Path) -> None:
    body = {"type": "conflict", "detail": "job j1 is running; its output is not there yet"}
    with pytest.raises(ApiError) as refused:
        _api(httpx.Response(409, json=body)).download_output("j1", tmp_path / "p.parquet")
    assert (refused.value.status, refused.value.detail) == (409, body["detail"])
    expired = httpx.Response(303, headers={"Location": f"{signed_urls}/gone"})
    with pytest.raises(ApiError) as refused:
        _api(expired).download_output("j1", tmp_path / "p.csv")
    assert refused.value.status == 403 and "expired" in refused.value.detail
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        _api(expired).download_output("j1", tmp_path / "p.json")


def test_the_output_streams_from_the_api(tmp_path: Path) -> None:
    table, parquet = _output(tmp_path)
    tq = _api(
        httpx.Response(
            200, content=parquet, headers={"Content-Type": "application/vnd.apache.parquet"}
        )
    )
    saved = tq.download_output("j1", tmp_path / "preds.parquet")
    assert pq.read_table(saved).equals(table)


@pytest.mark.slow
def test_train_on_a_data_set_then_score_it_into_a_file(
    api_client: Any, worker: Path, tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "rows.csv", 1_500)
    name = unique("scored")
    tq = Client(http=api_client)
    tq.upload_dataset(data, name)
    job = tq.train_on_dataset(
        name, "mlp", name, label="label", features=["x1", "x2"], training={"epochs": 2}
    )
    assert tq.wait(job["id"], timeout=180, poll=0.2)["state"] == "succeeded"
    assert tq.model_version(name)["dataset"]["name"] == name

    rows = pa_csv.read_csv(data)
    inputs = [list(r) for r in zip(rows["x1"].to_pylist(), rows["x2"].to_pylist(), strict=True)]
    # Row by row, as a job (``Client.predict`` sets a timeout, which the test client refuses).
    one = api_client.post("/v1/jobs/predict", json={"model_name": name, "inputs": inputs})
    expected = [o["label"] for o in tq.wait(one.json()["id"], timeout=120)["result"]["outputs"]]
    job = tq.predict_dataset(name, name, features=["x1", "x2"], id_column="id")
    done = tq.wait(job["id"], timeout=180, poll=0.2)
    assert done["state"] == "succeeded", done.get("error")
    for path in (tmp_path / "p.parquet", tmp_path / "p.csv"):
        saved = tq.download_output(job["id"], path)
        got = pq.read_table(saved) if path.suffix == ".parquet" else pa_csv.read_csv(saved)
        assert got["id"].to_pylist() == rows["id"].to_pylist()
        assert got["label"].to_pylist() == expected
