"""A Python client for the torchqueue API, for other systems and for the command line.

    from api.client import Client
    with Client("http://127.0.0.1:8000") as tq:
        job = tq.train("iris-mlp", "mlp", {"builtin": "iris"}, training={"epochs": 50})
        job = tq.wait(job["id"])
        print(tq.predict_now("iris-mlp", [[5.1, 3.5, 1.4, 0.2]])["outputs"])

        tq.upload_dataset("houses.csv", "houses", label="price")
        job = tq.wait(tq.train_on_dataset("houses-mlp", "mlp", "houses", label="price")["id"])
        job = tq.wait(tq.predict_dataset("houses-mlp", "houses", id_column="id")["id"])
        tq.download_output(job["id"], "predictions.parquet")

The URL comes from ``base_url``, else ``TORCHQUEUE_API_URL``, else the URL that a running
``torchqueue up`` recorded in its home (``TORCHQUEUE_HOME``), else http://127.0.0.1:8000.
The API key comes from ``api_key``, else ``TORCHQUEUE_API_KEY``, else the local admin key
that ``torchqueue up`` wrote in the home. Every method returns the API's JSON as plain
dicts; an error answer raises ``ApiError`` with the HTTP status, the error's ``type``, its
``detail`` and the ``field`` at fault. When the API cannot be reached, or refuses the key,
the detail names the URL tried and where it and the key came from.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from shared.config import DEFAULT_API_URL, Settings, get_settings
from shared.formats import MEDIA_TYPES, SUFFIXES
from shared.jobstate import TERMINAL

Json = dict[str, Any]
# (bytes so far, bytes in all; None when the server did not say)
Progress = Callable[[int, int | None], None]

# A batch prediction's output, by the suffix of the file it is saved to.
OUTPUT_TYPES = {".parquet": MEDIA_TYPES["parquet"], ".csv": MEDIA_TYPES["csv"]}
CHUNK = 1024 * 1024


def job_error(job: Json) -> str | None:
    """A failed job's ``error`` in one line, ``type: detail``; None when it has none. Jobs
    that failed before errors had one shape hold ``message`` where ``detail`` is now."""
    error = job.get("error")
    if not error:
        return None
    return f"{error.get('type')}: {error.get('detail', error.get('message'))}"


class ApiError(Exception):
    def __init__(self, status: int, type_: str, detail: str, field: str | None = None):
        super().__init__(f"{status} {type_}: {detail}")
        self.status, self.type, self.detail, self.field = status, type_, detail, field


@dataclass(frozen=True)
class Target:
    """The API a client calls and the key it sends, each with where it came from."""

    url: str
    url_from: str
    key: str | None
    key_from: str

    @classmethod
    def resolve(cls, settings: Settings, url: str | None, key: str | None) -> Target:
        recorded = settings.recorded_up()
        if url:
            url_from = "as given"
        elif settings.api_url:
            url, url_from = settings.api_url, "from TORCHQUEUE_API_URL"
        elif recorded.get("api_url"):
            url = str(recorded["api_url"])
            url_from = (
                f"recorded by `torchqueue up` in {settings.up_file}; "
                "set TORCHQUEUE_API_URL to call another"
            )
        else:
            url = DEFAULT_API_URL
            url_from = (
                f"the default: no `torchqueue up` recorded one in {settings.up_file}; "
                "set TORCHQUEUE_API_URL"
            )
        if key:
            key_from = "the key given"
        elif settings.api_key is not None:
            key_from = "the key in TORCHQUEUE_API_KEY"
        elif settings.client_key:
            key_from = (
                f"the key in {settings.admin_key_file} (made by `torchqueue up`); "
                "set TORCHQUEUE_API_KEY to send another"
            )
        else:
            key_from = (
                f"no key: set TORCHQUEUE_API_KEY, or run `torchqueue up`, which writes one "
                f"to {settings.admin_key_file}"
            )
        return cls(url.rstrip("/"), url_from, key or settings.client_key, key_from)


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``http``: an HTTP client to send every request through instead, with its own
        base URL, headers and timeout (a test client of the app, say); its owner closes it."""
        self._owns_http = http is None
        self.target: Target | None = None
        if http is not None:
            self._http = http
            self.base_url = str(http.base_url).rstrip("/")
            return
        self.target = target = Target.resolve(get_settings(), base_url, api_key)
        self.base_url = target.url
        key = target.key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        where = f" ({self.target.url_from})" if self.target else ""
        detail = f"cannot reach the API at {self.base_url}{where}: {exc or type(exc).__name__}"
        return ApiError(0, "unreachable", detail)

    def _error(self, response: httpx.Response) -> ApiError:
        """The ApiError of an error answer (read whole: error bodies are small)."""
        try:
            body = response.json()
        except ValueError:
            body = {"type": "http_error", "detail": response.text[:500]}
        if not isinstance(body, dict):
            body = {"detail": body}
        detail = str(body.get("detail", body))
        if response.status_code == 401 and self.target:
            detail = f"{detail} (the API at {self.base_url}; {self.target.key_from})"
        return ApiError(
            response.status_code, str(body.get("type", "http_error")), detail, body.get("field")
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise self._error(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return {"type": "http_error", "detail": response.text[:500]}

    def _call(self, method: str, path: str, **kwargs: Any) -> Json:
        body: Json = self._request(method, path, **kwargs)
        return body

    # --- jobs --------------------------------------------------------------------------

    def train(
        self,
        model_name: str,
        family: str,
        dataset: Json,
        *,
        params: Json | None = None,
        training: Json | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        body = {
            "model_name": model_name,
            "family": family,
            "dataset": dataset,
            "params": params or {},
            "training": training or {},
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs/train", json=body, headers=headers)

    def predict(
        self,
        model_name: str,
        inputs: list[Any],
        *,
        version: int | str = "latest",
        wait: float | None = None,
    ) -> Json:
        """A prediction job (``POST /v1/jobs/predict``), the way for large or low-priority
        batches: the job, finished when it ends within ``wait`` seconds, else to ``wait``
        for. Its outputs are in ``result``."""
        body: Json = {"model_name": model_name, "version": version, "inputs": inputs}
        if wait is not None:
            body["wait"] = wait
        timeout = self._http.timeout.read or 30.0
        return self._call("POST", "/v1/jobs/predict", json=body, timeout=timeout + (wait or 0))

    def predict_now(
        self,
        model_name: str,
        inputs: list[Any] | Json,
        *,
        version: int | str = "latest",
        timeout: float | None = None,
        outputs: str = "json",
    ) -> Json:
        """A sync prediction: ``{"job_id", "model_version", "outputs", …}`` at once, or,
        when it is not done within ``timeout`` seconds (default 10), its job, to ``wait``
        for (it has ``id`` and ``state``, no ``outputs``)."""
        body: Json = {"inputs": inputs, "outputs": outputs}
        if timeout is not None:
            body["timeout"] = timeout
        read = (self._http.timeout.read or 30.0) + (timeout or 10.0)
        path = f"/v1/models/{quote(model_name, safe='')}/predict"
        return self._call("POST", path, params={"version": version}, json=body, timeout=read)

    def train_on_dataset(
        self,
        model_name: str,
        family: str,
        dataset: str,
        *,
        label: str,
        version: int | str = "latest",
        features: list[str] | None = None,
        text: str | None = None,
        validation: str | None = None,
        validation_version: int | str = "latest",
        params: Json | None = None,
        training: Json | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """A training job on a stored data set (``upload_dataset``): ``label`` is the column
        to predict; ``features`` the input columns (default: all others) or ``text`` the
        column of texts; ``validation`` a second data set to validate on."""
        spec: Json = {"name": dataset, "version": version, "label": label}
        if features is not None:
            spec["features"] = features
        if text is not None:
            spec["text"] = text
        if validation is not None:
            spec["validation"] = {"name": validation, "version": validation_version}
        return self.train(
            model_name,
            family,
            spec,
            params=params,
            training=training,
            idempotency_key=idempotency_key,
        )

    def predict_dataset(
        self,
        model_name: str,
        dataset: str,
        *,
        dataset_version: int | str = "latest",
        version: int | str = "latest",
        features: list[str] | None = None,
        text: str | None = None,
        id_column: str | None = None,
    ) -> Json:
        """A batch prediction over a stored data set: the job; once it has succeeded,
        ``download_output`` saves its predictions, one row per input row, in order (with
        ``id_column`` copied beside each)."""
        spec: Json = {"name": dataset, "version": dataset_version}
        for key, value in (("features", features), ("text", text), ("id", id_column)):
            if value is not None:
                spec[key] = value
        body: Json = {"model_name": model_name, "version": version, "dataset": spec}
        return self._call("POST", "/v1/jobs/predict", json=body)

    def download_output(
        self, job_id: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        """Save a batch prediction's output to ``path``, as Parquet or CSV by its suffix,
        streamed to disk (from the store's pre-signed URL where the API answers with one)
        and renamed into place once whole. ``progress(received, total)`` follows it."""
        dest = Path(path)
        media_type = OUTPUT_TYPES.get(dest.suffix.lower())
        if media_type is None:
            raise ValueError(f"{dest}: an output is saved as .parquet or .csv")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self._download(job_id, media_type, tmp, progress)
            if media_type == OUTPUT_TYPES[".csv"] and _is_parquet(tmp):
                _parquet_to_csv(tmp)  # a pre-signed URL serves the stored Parquet as it is
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _download(self, job_id: str, media_type: str, tmp: Path, progress: Progress | None) -> None:
        path = f"/v1/jobs/{quote(job_id, safe='')}/output"
        headers = {"Accept": media_type}
        try:
            with self._http.stream("GET", path, headers=headers, follow_redirects=False) as answer:
                if answer.is_redirect:
                    signed = str(answer.url.join(answer.headers["location"]))
                    _fetch_signed(signed, tmp, progress)
                    return
                if answer.is_error:
                    answer.read()
                    raise self._error(answer)
                _save(answer, tmp, progress)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def job(self, job_id: str) -> Json:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> Json:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def events(self, job_id: str) -> list[Json]:
        events: list[Json] = self._request("GET", f"/v1/jobs/{job_id}/events")
        return events

    def jobs(self, **filters: Any) -> Json:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_update: Callable[[Json], None] | None = None,
        until: Callable[[Json], bool] | None = None,
    ) -> Json:
        """Poll until the job ends, or ``until(job)`` is true, or ``timeout`` seconds pass;
        return its last state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            done = job["state"] in TERMINAL or (until is not None and until(job))
            if done or (deadline is not None and time.monotonic() > deadline):
                return job
            time.sleep(poll)

    # --- data sets ---------------------------------------------------------------------

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        format: str | None = None,
        label: str | None = None,
        progress: Progress | None = None,
    ) -> Json:
        """Upload the file at ``path`` as the next version of data set ``name``; its
        ``DatasetVersionOut``. The file is streamed as the body, a chunk at a time, never
        read whole; ``progress(sent, total)`` is called after each chunk. The format is
        ``format`` (csv, parquet, jsonl, npy, npz), else the file's suffix; ``label`` is a
        column the API checks is there."""
        source = Path(path)
        size = source.stat().st_size
        fmt = format or SUFFIXES.get(source.suffix.lower())
        params = {"name": name, "filename": source.name}
        if format:
            params["format"] = format
        if label:
            params["label"] = label
        headers = {
            "Content-Type": MEDIA_TYPES.get(fmt or "", "application/octet-stream"),
            "Content-Length": str(size),
        }
        extra: Json = {}
        if self._owns_http:  # a client given keeps its own timeouts
            # The API reads the whole file before it answers: allow a second a megabyte.
            base = self._http.timeout
            extra["timeout"] = httpx.Timeout(
                base.connect, read=(base.read or 30.0) + size / 2**20, write=base.write,
                pool=base.pool,
            )  # fmt: skip
        body: Json = self._request(
            "POST",
            "/v1/datasets",
            params=params,
            headers=headers,
            content=_chunks(source, size, progress),
            **extra,
        )
        return body

    def register_dataset_url(self, name: str, url: str, format: str | None = None) -> Json:
        """A data set version that the workers read from ``url`` (s3://…, under a prefix
        the operator allows); its sha256, rows and columns are recorded at the first read."""
        params = {"name": name, "url": url}
        if format:
            params["format"] = format
        return self._call("POST", "/v1/datasets", params=params, content=b"")

    def list_datasets(self, *, limit: int = 50, offset: int = 0) -> Json:
        return self._call("GET", "/v1/datasets", params={"limit": limit, "offset": offset})

    def get_dataset(self, name: str) -> Json:
        """A data set with every version."""
        return self._call("GET", f"/v1/datasets/{quote(name, safe='')}")

    def get_dataset_version(self, name: str, version: int | str = "latest") -> Json:
        return self._call("GET", f"/v1/datasets/{quote(name, safe='')}/versions/{version}")

    def delete_dataset_version(self, name: str, version: int) -> None:
        """Refused (409) while a model version trained on it is registered."""
        self._request("DELETE", f"/v1/datasets/{quote(name, safe='')}/versions/{version}")

    def builtin_datasets(self) -> Json:
        return self._call("GET", "/v1/builtin-datasets")

    # --- sweeps -------------------------------------------------------------------------

    def start_sweep(self, body: dict[str, Any]) -> Json:
        """Start a sweep (``shared.sweep_schemas.SweepRequest``): a base training job, a
        space over its fields, trials, parallel, metric, direction, sampler, pruner."""
        return self._call("POST", "/v1/sweeps", json=body)

    def sweep(self, sweep_id: str) -> Json:
        return self._call("GET", f"/v1/sweeps/{quote(sweep_id, safe='')}")

    def sweeps(self, *, limit: int = 50, offset: int = 0) -> Json:
        return self._call("GET", "/v1/sweeps", params={"limit": limit, "offset": offset})

    def cancel_sweep(self, sweep_id: str) -> Json:
        return self._call("POST", f"/v1/sweeps/{quote(sweep_id, safe='')}/cancel")

    def families(self) -> Json:
        """Every model family a training job may name, by name: its parameters' JSON
        Schema and defaults, input kind, tasks, package, and the pools offering it."""
        return self._call("GET", "/v1/families")

    # --- models ------------------------------------------------------------------------

    def models(self, *, limit: int = 50, offset: int = 0) -> Json:
        return self._call("GET", "/v1/models", params={"limit": limit, "offset": offset})

    def model(self, name: str) -> Json:
        return self._call("GET", f"/v1/models/{name}")

    def model_version(self, name: str, version: int | str = "latest") -> Json:
        """A version by its number, ``latest``, or an alias."""
        return self._call("GET", f"/v1/models/{name}/versions/{version}")

    def set_alias(self, name: str, alias: str, version: int | str) -> Json:
        """Point ``alias`` (``production``, …) at ``version`` (a number, or latest or
        another alias, resolved now); the alias as it now is."""
        return self._call("PUT", _alias_path(name, alias), json={"version": version})

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", _alias_path(name, alias))

    def alias_history(
        self, name: str, *, alias: str | None = None, limit: int = 100, offset: int = 0
    ) -> Json:
        """Every move and removal of the model's aliases, newest first: ``items`` of
        ``{alias, from_version, to_version, by_key, by_name, at}``."""
        params: Json = {"limit": limit, "offset": offset}
        if alias is not None:
            params["alias"] = alias
        path = f"/v1/models/{quote(name, safe='')}/alias-history"
        return self._call("GET", path, params=params)

    def workers(self) -> list[Json]:
        workers: list[Json] = self._request("GET", "/v1/workers")
        return workers

    def ready(self) -> Json:
        return self._call("GET", "/readyz")


def _alias_path(name: str, alias: str) -> str:
    return f"/v1/models/{quote(name, safe='')}/aliases/{quote(alias, safe='')}"


def _chunks(source: Path, size: int, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)


def _save(answer: httpx.Response, dest: Path, progress: Progress | None) -> None:
    length = answer.headers.get("content-length")
    total = int(length) if length and length.isdigit() else None
    received = 0
    with dest.open("wb") as f:
        for chunk in answer.iter_bytes(CHUNK):
            f.write(chunk)
            received += len(chunk)
            if progress is not None:
                progress(received, total)


def _fetch_signed(url: str, dest: Path, progress: Progress | None) -> None:
    """A pre-signed URL carries its own credentials: fetched with no API key."""
    host = httpx.URL(url).host
    try:
        with httpx.stream("GET", url, timeout=60) as answer:
            if answer.is_error:
                answer.read()
                raise ApiError(
                    answer.status_code, "store_error", f"{host} answered: {answer.text[:300]}"
                )
            _save(answer, dest, progress)
    except httpx.TransportError as exc:
        raise ApiError(0, "unreachable", f"cannot download the output from {host}: {exc}") from None


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PAR1"


def _parquet_to_csv(path: Path) -> None:
    """Rewrite a Parquet file as CSV in place, a row group at a time."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    out = path.with_name(path.name + ".csv")
    try:
        parquet = pq.ParquetFile(path)
        with pa_csv.CSVWriter(out, parquet.schema_arrow) as writer:
            for i in range(parquet.num_row_groups):
                writer.write_table(parquet.read_row_group(i))
        os.replace(out, path)
    finally:
        out.unlink(missing_ok=True)
