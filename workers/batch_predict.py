"""Batch predictions over a stored data set."""

from __future__ import annotations

from typing import Any

from shared.errors import BadData
from shared.schemas import JobOut, ModelVersionOut, PredictSpec


def run(job: JobOut, spec: PredictSpec, version: ModelVersionOut, worker: str, lease: Any) -> None:
    raise BadData("batch predictions over a data set are not available yet")
