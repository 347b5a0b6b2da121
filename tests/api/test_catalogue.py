"""What a caller can train: the families and the built-in data sets, with their classes."""

from __future__ import annotations

from typing import Any


def test_the_builtin_data_sets_name_their_classes(api_client: Any) -> None:
    listed = api_client.get("/v1/builtin-datasets").json()
    assert listed["iris"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert listed["sentiment"]["classes"] == ["negative", "positive"]
    assert listed["digits"]["classes"] == list(range(10))
    assert "classes" not in listed["diabetes"]  # a regression
