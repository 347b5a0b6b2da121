"""Hostile input: schemathesis against the API's own OpenAPI schema, and property tests of
the spec validation. No answer is a 5xx or carries a traceback; the server keeps serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ops import embedded_redis
from shared.errors import InvalidSpec
from shared.processes import free_port
from shared.schemas import TrainRequest
from shared.validation import resolve_train
from tests.helpers import ADMIN_KEY, AUTH, ROOT, fresh_database
from tests.test_import_rules import serving

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
rows = st.lists(
    st.lists(st.floats(-1e6, 1e6) | st.integers(-100, 100), min_size=1, max_size=4),
    min_size=1,
    max_size=6,
)
texts = st.lists(st.text(max_size=20), min_size=1, max_size=6)
labels = st.lists(
    st.integers(0, 3) | st.text(max_size=3) | st.floats(-5, 5), min_size=1, max_size=6
)
requests = st.fixed_dictionaries(
    {
        "model_name": st.sampled_from(["m", "a.b-c_1", "../x", "", "x" * 200])
        | st.text(max_size=10),
        "family": st.sampled_from(["mlp", "text_lstm", "cnn"]),
        "dataset": st.one_of(
            st.fixed_dictionaries({"builtin": st.sampled_from(["iris", "sentiment", "mnist"])}),
            st.fixed_dictionaries(
                {"inline": st.fixed_dictionaries({"inputs": rows | texts, "labels": labels})}
            ),
            json_values,
        ),
    },
    optional={
        "params": st.dictionaries(
            st.sampled_from(
                ["hidden_sizes", "activation", "dropout", "task", "num_words", "max_len", "bogus"]
            ),
            json_values | st.lists(st.integers(-5, 100_000), max_size=20),
            max_size=4,
        ),
        "training": st.dictionaries(
            st.sampled_from(["epochs", "batch_size", "learning_rate", "optimizer", "seed"]),
            json_values,
            max_size=3,
        ),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_validation_refuses_with_a_field_or_accepts_whole(body: dict[str, Any]) -> None:
    refused: InvalidSpec | None = None
    try:
        spec = resolve_train(TrainRequest.model_validate(body))
    except ValidationError:
        return
    except InvalidSpec as exc:
        refused = exc
    if refused is not None:
        assert refused.field and refused.detail
        return
    # Accepted: what the worker will run is whole and serializable.
    again = type(spec).model_validate_json(spec.model_dump_json())
    assert again == spec


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_schemathesis_finds_no_server_error(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own Redis and database, with no worker: the jobs it submits are recorded, never
    # run, and a sync prediction is answered at once (no worker serves its queue).
    redis_proc, url = embedded_redis.start(tmp_path / "redis")
    db_url, remove_database = fresh_database(tmp_path)
    monkeypatch.setenv("TORCHQUEUE_REDIS_URL", url)
    monkeypatch.setenv("TORCHQUEUE_DATABASE_URL", db_url)
    log = tmp_path / "api.log"
    try:
        with serving(["api"], free_port(), "/healthz", log) as base:
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schemathesis.cli",
                    "run",
                    f"{base}/openapi.json",
                    "--checks",
                    "not_a_server_error",
                    "--max-examples",
                    "50",
                    "--seed",
                    str(seed),
                    "-H",
                    f"Authorization: Bearer {ADMIN_KEY}",
                    "--request-timeout",
                    "30",
                    "--no-color",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
            assert httpx.get(f"{base}/readyz").status_code == 200
            assert httpx.get(f"{base}/v1/jobs", headers=AUTH).status_code == 200
    finally:
        redis_proc.kill()
        redis_proc.wait()
        remove_database()
    assert "Traceback" not in log.read_text()
