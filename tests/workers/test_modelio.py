from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.artifacts import LocalArtifactStore, sha256_hex
from shared.errors import ModelLoadError
from workers import modelio
from workers.training import Trained


def test_a_model_round_trips_with_its_checksum(trained: Trained, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    saved = modelio.save(trained, store, "models/tiny/job1")
    weights = (tmp_path / "models/tiny/job1/model.safetensors").read_bytes()
    assert saved.sha256 == sha256_hex(weights)
    manifest = json.loads((tmp_path / "models/tiny/job1/manifest.json").read_text())
    assert manifest["sha256"] == saved.sha256
    assert manifest["family"] == "text_lstm"
    assert manifest["target"]["classes"] == [0, 1]
    assert "good" in manifest["preprocessor"]["vocab"]

    loaded = modelio.load(store, saved.uri, saved.sha256)
    before = trained.module
    assert all(
        (a == b).all()
        for a, b in zip(
            before.state_dict().values(), loaded.module.state_dict().values(), strict=True
        )
    )
    [out] = loaded.predict(["good film"])
    assert out["label"] in (0, 1)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0)


def test_a_tampered_file_is_refused(trained: Trained, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    saved = modelio.save(trained, store, "models/tiny/job2")
    path = tmp_path / "models/tiny/job2/model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        modelio.load(store, saved.uri, saved.sha256)


def test_a_manifest_naming_other_weights_is_refused(trained: Trained, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    saved = modelio.save(trained, store, "models/tiny/job3")
    path = tmp_path / "models/tiny/job3/manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"] = "f" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        modelio.load(store, saved.uri, saved.sha256)


def test_a_missing_artifact_says_where(trained: Trained, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ModelLoadError, match="missing"):
        modelio.load(store, store.uri("models/none/x"), "0" * 64)


def test_keys_cannot_leave_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b"):
        with pytest.raises(ValueError, match="bad artifact key"):
            store.put_bytes(key, b"")
