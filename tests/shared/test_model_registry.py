from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.db import job_reads, jobs, model_registry
from shared.db.session import session_scope
from shared.errors import NotFound
from shared.jobstate import JobKind
from tests.helpers import unique


def _register(name: str) -> int:
    with session_scope() as s:
        job = jobs.create_job(s, kind=JobKind.train, model_name=name, spec={}, queue="train")
    with session_scope() as s:
        version = model_registry.register_model_version(
            s,
            model_name=name,
            family="mlp",
            params={},
            input_schema={"kind": "features", "n_features": 4},
            metrics={"val_accuracy": 1.0},
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            job_id=job.id,
        )
    return version.version


def test_versions_count_up_per_name() -> None:
    a, b = unique("a"), unique("b")
    assert [_register(a) for _ in range(3)] == [1, 2, 3]
    assert _register(b) == 1
    with session_scope() as s:
        assert model_registry.get_model_version(s, a, "latest").version == 3
        assert model_registry.get_model_version(s, a, 2).version == 2
        model = model_registry.get_model(s, a)
    assert model.latest_version == 3
    assert [v.version for v in model.versions or []] == [1, 2, 3]


def test_racing_registrations_get_distinct_versions() -> None:
    name = unique("race")
    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(lambda _: _register(name), range(16)))
    assert versions == list(range(1, 17))


def test_unknown_models_and_versions_are_not_found() -> None:
    name = unique("m")
    _register(name)
    with session_scope() as s:
        with pytest.raises(NotFound) as missing_model:
            model_registry.get_model_version(s, unique("nope"), "latest")
        assert missing_model.value.field == "model_name"
        with pytest.raises(NotFound) as missing_version:
            model_registry.get_model_version(s, name, 7)
        assert missing_version.value.field == "version"
        with pytest.raises(NotFound):
            job_reads.get_job(s, "no-such-job")
