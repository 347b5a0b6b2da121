"""The model cache: bounded by the memory its models' weights take, least recently used out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.artifacts import LocalArtifactStore
from shared.jobstate import now
from shared.schemas import ModelVersionOut
from tests.helpers import reset_caches
from workers import inference, modelio


@pytest.fixture
def versions(
    trained: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[ModelVersionOut]]:
    monkeypatch.setenv("TORCHQUEUE_ARTIFACTS_URL", str(tmp_path))
    reset_caches()
    inference.clear()
    store = LocalArtifactStore(tmp_path)
    out = []
    for version in (1, 2, 3):
        saved = modelio.save(trained, store, f"models/cached/v{version}")
        out.append(
            ModelVersionOut(
                model_name="cached",
                version=version,
                family="text_lstm",
                params={},
                input_schema={"kind": "text"},
                metrics={},
                artifact_uri=saved.uri,
                sha256=saved.sha256,
                job_id="j",
                usage=None,
                created_at=now(),
            )
        )
    yield out
    inference.clear()
    monkeypatch.undo()
    reset_caches()


def test_the_cache_keeps_models_within_its_memory_bound(
    versions: list[ModelVersionOut], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = inference.model_bytes(inference.get_model(versions[0]))
    assert size > 0
    monkeypatch.setenv("TORCHQUEUE_MODEL_CACHE_MB", str(2.5 * size / 2**20))  # room for two
    reset_caches()
    inference.clear()
    for v in versions[:2]:
        inference.get_model(v)
    assert inference.cached() == [("cached", 1), ("cached", 2)]
    inference.get_model(versions[0])  # used again: now the most recent
    inference.get_model(versions[2])  # over the bound: the least recently used goes
    assert inference.cached() == [("cached", 1), ("cached", 3)]
    assert inference.predict(versions[1], ["good film"])[0]["label"] in (0, 1)
    assert inference.cached() == [("cached", 3), ("cached", 2)]


def test_a_model_over_the_bound_alone_is_still_served(
    versions: list[ModelVersionOut], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHQUEUE_MODEL_CACHE_MB", "0")
    reset_caches()
    assert inference.predict(versions[0], ["bad film"])[0]["label"] in (0, 1)
    assert inference.cached() == [("cached", 1)]
