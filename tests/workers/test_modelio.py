"""Models on disk: a round trip, and every way a stored model can be unreadable refused as
ModelLoadError, with nothing unpickled and the process still able to load a good model."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors

from shared.artifacts import LocalArtifactStore, sha256_hex
from shared.errors import ModelLoadError
from shared.jobstate import now
from shared.schemas import ModelVersionOut
from tests.helpers import reset_caches
from workers import inference, modelio
from workers.training import Trained

PREFIX = "models/tiny/job"


class Bait:
    """Unpickling this makes the directory ``path``: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (os.mkdir, (str(self.path),))


def pickled_bait(marker: Path) -> bytes:
    return pickle.dumps({"embedding.weight": Bait(marker)})


def torch_saved_bait(marker: Path) -> bytes:
    out = io.BytesIO()
    torch.save({"head.bias": torch.zeros(1), "bait": Bait(marker)}, out)
    return out.getvalue()


def safetensors_of(header: dict[str, Any], data: bytes) -> bytes:
    """A file in the safetensors layout, written by hand (to hold what torch cannot)."""
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


@pytest.fixture
def saved(trained: Trained, tmp_path: Path) -> tuple[LocalArtifactStore, modelio.Saved]:
    store = LocalArtifactStore(tmp_path / "store")
    return store, modelio.save(trained, store, PREFIX)


def files(store: LocalArtifactStore) -> tuple[Path, Path]:
    return store.root / PREFIX / modelio.WEIGHTS, store.root / PREFIX / modelio.MANIFEST


def edit_manifest(store: LocalArtifactStore, change: Callable[[dict[str, Any]], None]) -> None:
    _, path = files(store)
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def swap_weights(store: LocalArtifactStore, data: bytes) -> str:
    """Put ``data`` in place of the weights and make every checksum agree with it: the
    manifest's and (returned) the one a registry row would hold."""
    weights, _ = files(store)
    weights.write_bytes(data)
    digest = sha256_hex(data)
    edit_manifest(store, lambda m: m.update(sha256=digest))
    return digest


def refused(store: LocalArtifactStore, uri: str, sha256: str, words: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=words) as caught:
        modelio.load(store, uri, sha256)
    assert uri in caught.value.detail or store.root.as_uri() in caught.value.detail
    return caught.value


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


# Every way a stored model can be unreadable.


def test_missing_weights_are_refused(saved: tuple[LocalArtifactStore, modelio.Saved]) -> None:
    store, model = saved
    files(store)[0].unlink()
    refused(store, model.uri, model.sha256, "missing")


def test_a_missing_manifest_is_refused(saved: tuple[LocalArtifactStore, modelio.Saved]) -> None:
    store, model = saved
    files(store)[1].unlink()
    refused(store, model.uri, model.sha256, "missing")


def test_weights_as_a_directory_are_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved],
) -> None:
    store, model = saved
    files(store)[0].unlink()
    files(store)[0].mkdir()
    refused(store, model.uri, model.sha256, "cannot read")


@pytest.mark.parametrize(
    "data",
    [b"{not json", b'{"family": "text_lstm"', b"\xff\xfe\x00garbage", b"[" * 100_000, b""],
    ids=["broken", "truncated", "not-utf8", "too-deep", "empty"],
)
def test_a_manifest_that_is_not_json_is_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved], data: bytes
) -> None:
    store, model = saved
    files(store)[1].write_bytes(data)
    refused(store, model.uri, model.sha256, "not valid JSON")


@pytest.mark.parametrize("value", [[], "text", 1, None])
def test_a_manifest_that_is_not_an_object_is_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved], value: Any
) -> None:
    store, model = saved
    files(store)[1].write_text(json.dumps(value))
    refused(store, model.uri, model.sha256, "not a JSON object")


@pytest.mark.parametrize(
    "field",
    ["format", "family", "params", "task", "n_outputs", "preprocessor", "target",
     "input_schema", "weights", "sha256"],
)  # fmt: skip
def test_a_manifest_missing_a_field_is_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved], field: str
) -> None:
    store, model = saved
    edit_manifest(store, lambda m: m.pop(field))
    refused(store, model.uri, model.sha256, f"has no '{field}'")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_outputs", "1"),
        ("n_outputs", True),
        ("n_outputs", 1.0),
        ("params", ["embedding_dim"]),
        ("preprocessor", "tokenizer"),
        ("target", None),
        ("family", ["text_lstm"]),
        ("task", 0),
        ("input_schema", "text"),
        ("weights", 5),
        ("sha256", None),
        ("format", "1"),
    ],
)
def test_a_manifest_field_of_the_wrong_type_is_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved], field: str, value: Any
) -> None:
    store, model = saved
    edit_manifest(store, lambda m: m.update({field: value}))
    refused(store, model.uri, model.sha256, f"'{field}' is not an? (integer|string|object)")


def _case(path: str, value: Any, words: str) -> Any:
    """A change to the manifest at a dotted path (``...`` deletes the key), and the words
    that its refusal must say."""
    return pytest.param(path, value, words, id=f"{path}={value!r}"[:60])


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        _case("format", 2, "format 2"),
        _case("family", "resnet", "unknown family 'resnet'"),
        _case("family", "mlp", "params.*does not fit the mlp family"),
        _case("params.hidden_size", "32", r"params\.hidden_size does not fit"),
        _case("params.embedding_dim", -1, r"params\.embedding_dim does not fit"),
        _case("params.hidden_size", ..., "does not describe a text_lstm model.*hidden_size"),
        _case("preprocessor.max_len", ..., "does not describe a text_lstm model.*max_len"),
        _case("preprocessor.max_len", "long", "does not describe a text_lstm model"),
        _case("preprocessor.vocab", [1, 2], "does not describe a text_lstm model"),
        _case("preprocessor", {"kind": "standardizer", "mean": [0.0], "std": [1.0]},
              "does not describe a text_lstm model"),
        _case("input_schema", {"kind": "features", "n_features": 4}, "input schema"),
        _case("task", "clustering", "task 'clustering'.*do not agree"),
        _case("task", "regression", "task 'regression'.*do not agree"),
        _case("n_outputs", 3, "n_outputs 3 do not agree"),
        _case("target.classes", ..., "do not agree"),
        _case("target.classes", [1], "do not agree"),
        _case("preprocessor.vocab", {"good": 2}, "do not fit the model.*embedding.weight"),
        _case("params.hidden_size", 8, "do not fit the model"),
        _case("weights", "../../../elsewhere.safetensors", "bad artifact key"),
    ],
)  # fmt: skip
def test_a_manifest_with_values_that_do_not_fit_is_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved], path: str, value: Any, words: str
) -> None:
    store, model = saved

    def change(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            manifest = manifest[part]
        if value is ...:
            del manifest[last]
        else:
            manifest[last] = value

    edit_manifest(store, change)
    refused(store, model.uri, model.sha256, words)


def test_the_bait_works_when_unpickled(tmp_path: Path) -> None:
    """The payloads below are live: unpickled, each makes its marker."""
    pickle.loads(pickled_bait(tmp_path / "by-pickle"))  # only here, to prove the bait is live
    torch.load(io.BytesIO(torch_saved_bait(tmp_path / "by-torch")), weights_only=False)
    assert (tmp_path / "by-pickle").is_dir() and (tmp_path / "by-torch").is_dir()


@pytest.mark.parametrize("make", [pickled_bait, torch_saved_bait], ids=["pickle", "torch.save"])
def test_a_pickle_with_matching_checksums_is_refused_unread(
    saved: tuple[LocalArtifactStore, modelio.Saved],
    tmp_path: Path,
    make: Callable[[Path], bytes],
) -> None:
    store, model = saved
    marker = tmp_path / "unpickled"
    digest = swap_weights(store, make(marker))
    refused(store, model.uri, digest, "not a safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        struct.pack("<Q", 2**40) + b"{}",
        struct.pack("<Q", 5) + b"{oops",
        safetensors_of({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 4),
    ],
    ids=["empty", "short", "header-too-large", "header-not-json", "short-data"],
)
def test_bytes_that_are_not_safetensors_are_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved], data: bytes
) -> None:
    store, model = saved
    digest = swap_weights(store, data)
    refused(store, model.uri, digest, "not a safetensors file")


def test_a_dtype_torch_cannot_hold_is_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved],
) -> None:
    store, model = saved
    header = {"head.bias": {"dtype": "F8_E8M0", "shape": [1], "data_offsets": [0, 1]}}
    digest = swap_weights(store, safetensors_of(header, b"\x7f"))
    refused(store, model.uri, digest, "dtype 'F8_E8M0'")


def test_safetensors_of_other_tensors_are_refused(
    saved: tuple[LocalArtifactStore, modelio.Saved],
) -> None:
    store, model = saved
    digest = swap_weights(store, save_safetensors({"w": torch.zeros(3)}))
    refused(store, model.uri, digest, r"missing \[.*embedding.weight.*unexpected \['w'\]")


def test_weights_of_the_wrong_dtype_are_refused(
    trained: Trained, saved: tuple[LocalArtifactStore, modelio.Saved]
) -> None:
    store, model = saved
    state = {k: v.detach().double() for k, v in trained.module.state_dict().items()}
    digest = swap_weights(store, save_safetensors(state))
    refused(store, model.uri, digest, "torch.float64.*the model takes torch.float32")


def test_weights_of_the_wrong_shape_are_refused(
    trained: Trained, saved: tuple[LocalArtifactStore, modelio.Saved]
) -> None:
    store, model = saved
    state = {k: v.detach().clone() for k, v in trained.module.state_dict().items()}
    state["head.weight"] = torch.zeros(2, state["head.weight"].shape[1])
    digest = swap_weights(store, save_safetensors(state))
    refused(store, model.uri, digest, r"head.weight is torch.float32 \[2,")


# After a failed load, the same process loads and serves a good model.


@pytest.fixture
def two_versions(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModelVersionOut, ModelVersionOut, Path]]:
    """A good version and one whose weights are a pickle under matching checksums, in the
    store the model cache opens; and the marker that the pickle would make."""
    monkeypatch.setenv("TORCHQUEUE_ARTIFACTS_URL", str(tmp_path / "store"))
    reset_caches()
    inference.clear()
    store = LocalArtifactStore(tmp_path / "store")
    good = modelio.save(trained, store, "models/mixed/good")
    modelio.save(trained, store, PREFIX)
    marker = tmp_path / "unpickled"
    bad_sha = swap_weights(store, pickled_bait(marker))

    def version(number: int, uri: str, sha256: str) -> ModelVersionOut:
        return ModelVersionOut(
            model_name="mixed", version=number, family="text_lstm", params={},
            input_schema={"kind": "text"}, metrics={}, artifact_uri=uri, sha256=sha256,
            job_id="j", usage=None, created_at=now(),
        )  # fmt: skip

    yield version(1, store.uri(PREFIX), bad_sha), version(2, good.uri, good.sha256), marker
    inference.clear()
    monkeypatch.undo()
    reset_caches()


def test_the_cache_serves_a_good_model_after_a_bad_one(
    two_versions: tuple[ModelVersionOut, ModelVersionOut, Path],
) -> None:
    bad, good, marker = two_versions
    for _ in range(2):  # refused each time: a failure is not cached as a model
        with pytest.raises(ModelLoadError, match="not a safetensors file"):
            inference.get_model(bad)
        with pytest.raises(ModelLoadError, match="not a safetensors file"):
            inference.predict(bad, ["good film"])
    assert inference.cached() == []
    [answer] = inference.predict(good, ["good film"])
    assert answer["label"] in (0, 1)
    assert inference.cached() == [("mixed", 2)]
    with pytest.raises(ModelLoadError):
        inference.get_model(bad)
    assert inference.cached() == [("mixed", 2)]
    assert inference.predict(good, ["bad film"])[0]["label"] in (0, 1)
    assert not marker.exists()
