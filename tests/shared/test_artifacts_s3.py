"""The artifact store on S3, against a real S3-protocol server: moto's, started here on a
loopback port. Models and checkpoints go through the same code the workers run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import processes
from shared.artifacts import S3ArtifactStore, open_store, sha256_hex
from shared.config import get_settings
from shared.errors import ModelLoadError, Unavailable
from shared.schemas import TrainRequest
from shared.validation import resolve_train
from tests.helpers import ROOT
from workers import modelio
from workers.checkpoint import Checkpointer
from workers.training import Hooks, Interrupted, Trained, train

REGION = "us-east-1"
KEY_ID, SECRET = "testing-key-id", "testing-secret-access-key"


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    url: str  # s3://bucket/prefix: TORCHQUEUE_ARTIFACTS_URL while this module runs
    client: Any  # boto3's S3 client: a second, independent view of the bucket


def _wait_until_answering(proc: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            return
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    import boto3

    port = processes.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = processes.spawn(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log=log,
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
        cwd=ROOT,
    )
    try:
        _wait_until_answering(proc, endpoint, log)
        bucket = f"tq-{uuid.uuid4().hex[:12]}"
        with pytest.MonkeyPatch.context() as mp:
            # Nothing but the server on loopback: no proxy, no instance metadata, no
            # credentials or profile from the machine.
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_PROFILE"):
                mp.delenv(name, raising=False)
            mp.setenv("NO_PROXY", "127.0.0.1")
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            mp.setenv("TORCHQUEUE_S3_ENDPOINT_URL", endpoint)
            mp.setenv("TORCHQUEUE_S3_ACCESS_KEY_ID", KEY_ID)
            mp.setenv("TORCHQUEUE_S3_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("TORCHQUEUE_S3_REGION", REGION)
            url = f"s3://{bucket}/fleet/artifacts"
            mp.setenv("TORCHQUEUE_ARTIFACTS_URL", url)
            get_settings.cache_clear()
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
                region_name=REGION,
            )
            client.create_bucket(Bucket=bucket)
            try:
                yield S3(endpoint=endpoint, bucket=bucket, url=url, client=client)
            finally:
                client.close()
        get_settings.cache_clear()  # after the environment is restored
    finally:
        processes.stop(proc, timeout=10)


@pytest.fixture
def store(s3: S3) -> S3ArtifactStore:
    """The store as a worker opens it: from the settings, by TORCHQUEUE_ARTIFACTS_URL."""
    opened = open_store()
    assert isinstance(opened, S3ArtifactStore)
    return opened


def _object(s3: S3, key: str) -> bytes:
    body: bytes = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    return body


def test_bytes_round_trip(store: S3ArtifactStore, s3: S3) -> None:
    key = "misc/round/trip.bin"
    assert not store.exists(key)
    uri = store.put_bytes(key, b"first")
    assert uri == f"{s3.url}/{key}"
    assert store.exists(key)
    assert store.get_bytes(key) == b"first"
    # The object sits where the URI says, for any other S3 client to read.
    assert _object(s3, f"fleet/artifacts/{key}") == b"first"
    store.put_bytes(key, b"second")
    assert store.get_bytes(key) == b"second"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting what is gone is no error


def test_a_prefix_is_not_an_object(store: S3ArtifactStore) -> None:
    store.put_bytes("dir/inside/file", b"x")
    assert not store.exists("dir/inside")
    assert not store.exists("dir")


def test_uris_map_back_to_keys(store: S3ArtifactStore, s3: S3) -> None:
    key = "models/m/job/model.safetensors"
    assert store.uri(key) == f"s3://{s3.bucket}/fleet/artifacts/{key}"
    assert store.key_of(store.uri(key)) == key
    assert store.key_of(store.uri("models/m/job")) == "models/m/job"
    for foreign in (
        f"s3://other-bucket/fleet/artifacts/{key}",
        f"s3://{s3.bucket}/elsewhere/{key}",
        f"s3://{s3.bucket}/fleet/artifacts-2/{key}",
        f"s3://{s3.bucket}/fleet/artifacts",
        f"s3://{s3.bucket}/fleet/artifacts/../../{key}",
        f"file:///fleet/artifacts/{key}",
    ):
        with pytest.raises(ModelLoadError, match="outside the store"):
            store.key_of(foreign)


def test_a_missing_object_says_where(store: S3ArtifactStore) -> None:
    with pytest.raises(ModelLoadError, match=r"s3://.*/models/none/x is missing"):
        store.get_bytes("models/none/x")
    with pytest.raises(ModelLoadError, match="missing"):
        modelio.load(store, store.uri("models/none/x"), "0" * 64)


def test_keys_cannot_leave_the_store(store: S3ArtifactStore) -> None:
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", "", "a/?versionId=1"):
        for call in (store.put_bytes, lambda k, _d: store.get_bytes(k)):
            with pytest.raises(ValueError, match="bad artifact key"):
                call(key, b"")
        with pytest.raises(ValueError, match="bad artifact key"):
            store.uri(key)


def test_store_urls_are_checked() -> None:
    for url in ("s3://", "s3:///prefix", "s3://Bad_Bucket/x", "s3://bucket/a/../b"):
        with pytest.raises(ValueError, match="S3"):
            S3ArtifactStore.from_url(url)
    for url in ("ftp://host/dir", "gs://bucket/prefix", "http://127.0.0.1:1/x"):
        with pytest.raises(ValueError, match="unsupported artifact store"):
            open_store(url)


def test_half_set_credentials_are_refused(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHQUEUE_S3_SECRET_ACCESS_KEY")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValueError, match="SECRET_ACCESS_KEY"):
            open_store()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_an_unreachable_endpoint_is_unavailable() -> None:
    """A transient error, so that a worker gives the job back rather than fail it."""
    import s3fs

    files = s3fs.S3FileSystem(
        endpoint_url=f"http://127.0.0.1:{processes.free_port()}",  # nothing listens there
        key=KEY_ID,
        secret=SECRET,
        client_kwargs={"region_name": REGION},
        config_kwargs={"retries": {"max_attempts": 1}},
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    files.retries = 1
    store = S3ArtifactStore("bucket", "prefix", files=files)
    for call in (
        lambda: store.exists("k"),
        lambda: store.get_bytes("k"),
        lambda: store.put_bytes("k", b"x"),
        lambda: store.delete("k"),
    ):
        with pytest.raises(Unavailable, match="cannot be reached"):
            call()


def test_importing_the_store_does_not_import_s3fs() -> None:
    code = "import sys, shared.artifacts; assert 's3fs' not in sys.modules, 's3fs imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_model_round_trips_through_s3(trained: Trained, store: S3ArtifactStore, s3: S3) -> None:
    saved = modelio.save(trained, store, "models/tiny/job1")
    assert saved.uri == f"{s3.url}/models/tiny/job1"
    weights = _object(s3, "fleet/artifacts/models/tiny/job1/model.safetensors")
    assert saved.sha256 == sha256_hex(weights)
    manifest = json.loads(_object(s3, "fleet/artifacts/models/tiny/job1/manifest.json"))
    assert manifest["sha256"] == saved.sha256

    # Another machine opens the store from the same settings and loads the model.
    elsewhere = open_store()
    loaded = modelio.load(elsewhere, saved.uri, saved.sha256)
    assert all(
        (a == b).all()
        for a, b in zip(
            trained.module.state_dict().values(), loaded.module.state_dict().values(), strict=True
        )
    )
    [out] = loaded.predict(["good film"])
    assert out["label"] in (0, 1)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0)


def test_a_tampered_object_is_refused(trained: Trained, store: S3ArtifactStore, s3: S3) -> None:
    saved = modelio.save(trained, store, "models/tiny/job2")
    key = "fleet/artifacts/models/tiny/job2/model.safetensors"
    data = bytearray(_object(s3, key))
    data[-1] ^= 0xFF
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(data))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        modelio.load(store, saved.uri, saved.sha256)


def test_a_checkpoint_resumes_from_s3(store: S3ArtifactStore, s3: S3) -> None:
    spec = resolve_train(
        TrainRequest.model_validate(
            {
                "model_name": "m",
                "family": "mlp",
                "dataset": {"builtin": "iris"},
                "training": {"epochs": 5, "learning_rate": 0.05, "seed": 2},
            }
        )
    )
    whole = train(spec)
    checkpoints = Checkpointer(store, "checkpoints/job-s3/checkpoint")
    assert checkpoints.load() is None

    trained_epochs: list[int] = []
    stop = {"now": False}

    def note(record: dict[str, Any]) -> None:
        trained_epochs.append(record["epoch"])
        stop["now"] = record["epoch"] >= 2

    with pytest.raises(Interrupted):
        train(
            spec,
            hooks=Hooks(on_epoch=note, should_stop=lambda: stop["now"], checkpointer=checkpoints),
        )
    assert checkpoints.saved_epoch == 2
    assert store.exists("checkpoints/job-s3/checkpoint")
    s3.client.head_object(Bucket=s3.bucket, Key="fleet/artifacts/checkpoints/job-s3/checkpoint")

    # Resumed by a Checkpointer on a store opened afresh, as another worker would.
    again = Checkpointer(open_store(), "checkpoints/job-s3/checkpoint")
    resumed_from: list[int] = []
    resumed = train(
        spec,
        hooks=Hooks(
            on_epoch=lambda r: trained_epochs.append(r["epoch"]),
            on_resume=resumed_from.append,
            checkpointer=again,
        ),
    )
    assert resumed_from == [2]
    assert trained_epochs == [r["epoch"] for r in whole.history]
    for key, value in whole.metrics.items():
        assert resumed.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    again.delete()
    assert again.load() is None
