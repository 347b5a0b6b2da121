"""A registered model version whose stored files cannot be read, served by a real worker
process: both prediction routes answer ``model_load_error``, nothing is unpickled, and the
same worker goes on serving a good model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.artifacts import open_store, sha256_hex
from shared.config import get_settings
from shared.db import jobs, model_registry
from shared.db.session import session_scope
from shared.jobstate import JobKind
from tests.helpers import unique
from tests.test_serving import recorded
from tests.workers.test_modelio import pickled_bait, torch_saved_bait
from workers import modelio
from workers.training import Trained

pytestmark = pytest.mark.slow

TEXTS = ["good film", "bad film"]

# A change to a saved model's files (its directory and the marker a pickle would make);
# it returns the sha256 that the registry is to hold for the changed model.
Breakage = Callable[[Path, Path, str], str]


def register(name: str, trained: Trained, breakage: Breakage | None, marker: Path) -> str:
    """Save ``trained`` in the session's store, change its files, and register it."""
    with session_scope() as s:
        job = jobs.create_job(
            s, kind=JobKind.train, model_name=name, spec=trained.spec.model_dump(mode="json"),
            queue="t",
        )  # fmt: skip
    prefix = f"models/{name}/{job.id}"
    saved = modelio.save(trained, open_store(), prefix)
    directory = Path(get_settings().artifacts_location) / prefix
    sha256 = breakage(directory, marker, saved.sha256) if breakage else saved.sha256
    with session_scope() as s:
        model_registry.register_model_version(
            s, model_name=name, family="text_lstm", params=trained.spec.params,
            input_schema=trained.input_schema, metrics={}, artifact_uri=saved.uri,
            sha256=sha256, job_id=job.id,
        )  # fmt: skip
    return saved.uri


def _weights_as(make: Callable[[Path], bytes]) -> Breakage:
    """The weights replaced by a payload, with every checksum made to agree with it."""

    def breakage(directory: Path, marker: Path, _: str) -> str:
        data = make(marker)
        (directory / modelio.WEIGHTS).write_bytes(data)
        manifest = json.loads((directory / modelio.MANIFEST).read_text())
        manifest["sha256"] = sha256_hex(data)
        (directory / modelio.MANIFEST).write_text(json.dumps(manifest))
        return sha256_hex(data)

    return breakage


def _flip_a_byte(directory: Path, _: Path, sha256: str) -> str:
    path = directory / modelio.WEIGHTS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return sha256


def _manifest_garbled(directory: Path, _: Path, sha256: str) -> str:
    (directory / modelio.MANIFEST).write_bytes(b'{"format": 1, "family": ')
    return sha256


def _manifest_without_preprocessor(directory: Path, _: Path, sha256: str) -> str:
    manifest = json.loads((directory / modelio.MANIFEST).read_text())
    del manifest["preprocessor"]
    (directory / modelio.MANIFEST).write_text(json.dumps(manifest))
    return sha256


def _weights_deleted(directory: Path, _: Path, sha256: str) -> str:
    (directory / modelio.WEIGHTS).unlink()
    return sha256


@pytest.fixture(scope="module")
def good(trained: Trained) -> tuple[str, list[Any]]:
    """A readable model, and the labels it gives TEXTS when loaded in this process."""
    name = unique("readable")
    uri = register(name, trained, None, Path("/nonexistent"))
    with session_scope() as s:
        sha256 = model_registry.get_model_version(s, name, "latest").sha256
    labels = [o["label"] for o in modelio.load(open_store(), uri, sha256).predict(TEXTS)]
    return name, labels


@pytest.mark.parametrize(
    "breakage",
    [
        _weights_as(pickled_bait),
        _weights_as(torch_saved_bait),
        _flip_a_byte,
        _manifest_garbled,
        _manifest_without_preprocessor,
        _weights_deleted,
    ],
    ids=["pickle", "torch.save", "flipped-byte", "manifest-not-json", "no-preprocessor",
         "weights-missing"],
)  # fmt: skip
def test_an_unreadable_model_is_a_model_load_error_and_the_worker_serves_on(
    api_client: Any,
    worker: Path,
    trained: Trained,
    good: tuple[str, list[Any]],
    tmp_path: Path,
    breakage: Breakage,
) -> None:
    good_name, labels = good
    marker = tmp_path / "unpickled"
    broken = unique("unreadable")
    register(broken, trained, breakage, marker)

    body = {"inputs": TEXTS}
    response = api_client.post(f"/v1/models/{broken}/predict", json=body)
    assert response.status_code == 502, response.text
    error = response.json()
    assert error["type"] == "model_load_error", error
    assert "could not be loaded" in error["detail"] and broken in error["detail"], error
    assert "Traceback" not in response.text

    response = api_client.post(f"/v1/models/{good_name}/predict", json=body)
    assert response.status_code == 200, response.text
    assert [o["label"] for o in response.json()["outputs"]] == labels

    job = api_client.post("/v1/jobs/predict", json={"model_name": broken, **body, "wait": 60})
    assert job.status_code == 200, job.text
    assert job.json()["state"] == "failed", job.json()
    assert job.json()["error"]["type"] == "model_load_error", job.json()["error"]

    served = recorded(api_client, error["job_id"])
    assert served["state"] == "failed" and served["error"]["type"] == "model_load_error"

    job = api_client.post("/v1/jobs/predict", json={"model_name": good_name, **body, "wait": 60})
    assert job.status_code == 200 and job.json()["state"] == "succeeded", job.text
    assert [o["label"] for o in job.json()["result"]["outputs"]] == labels
    assert not marker.exists()
