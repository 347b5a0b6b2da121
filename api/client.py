"""A Python client for the torchqueue API, for other systems and for the command line.

    from api.client import Client
    with Client("http://127.0.0.1:8000") as tq:
        job = tq.train("iris-mlp", "mlp", {"builtin": "iris"}, training={"epochs": 50})
        job = tq.wait(job["id"])
        print(tq.predict_now("iris-mlp", [[5.1, 3.5, 1.4, 0.2]])["outputs"])

The URL comes from ``base_url``, else ``TORCHQUEUE_API_URL``, else the URL that a running
``torchqueue up`` recorded in its home (``TORCHQUEUE_HOME``), else http://127.0.0.1:8000.
The API key comes from ``api_key``, else ``TORCHQUEUE_API_KEY``, else the local admin key
that ``torchqueue up`` wrote in the home. Every method returns the API's JSON as plain
dicts; an error answer raises ``ApiError`` with the HTTP status, the error's ``type``, its
``detail`` and the ``field`` at fault. When the API cannot be reached, or refuses the key,
the detail names the URL tried and where it and the key came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from shared.config import DEFAULT_API_URL, Settings, get_settings
from shared.jobstate import TERMINAL

Json = dict[str, Any]


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

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            where = f" ({self.target.url_from})" if self.target else ""
            detail = f"cannot reach the API at {self.base_url}{where}: {exc or type(exc).__name__}"
            raise ApiError(0, "unreachable", detail) from None
        try:
            body = response.json()
        except ValueError:
            body = {"type": "http_error", "detail": response.text[:500]}
        if response.is_error:
            detail = str(body.get("detail", body))
            if response.status_code == 401 and self.target:
                detail = f"{detail} (the API at {self.base_url}; {self.target.key_from})"
            raise ApiError(
                response.status_code, str(body.get("type", "http_error")), detail, body.get("field")
            )
        return body

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

    # --- models ------------------------------------------------------------------------

    def models(self, *, limit: int = 50, offset: int = 0) -> Json:
        return self._call("GET", "/v1/models", params={"limit": limit, "offset": offset})

    def model(self, name: str) -> Json:
        return self._call("GET", f"/v1/models/{name}")

    def model_version(self, name: str, version: int | str = "latest") -> Json:
        return self._call("GET", f"/v1/models/{name}/versions/{version}")

    def workers(self) -> list[Json]:
        workers: list[Json] = self._request("GET", "/v1/workers")
        return workers

    def ready(self) -> Json:
        return self._call("GET", "/readyz")
