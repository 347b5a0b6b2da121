"""A plugin family's parameters, checked against the JSON Schema its workers reported as
pydantic checks a built-in family's: the field named, defaults filled in."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidSpec
from shared.param_schema import check


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(64, ge=1, le=4096)
    widths: list[int] = Field(default=[8, 8], max_length=4)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    mode: str = Field("fast", pattern="^(fast|slow)$")


SCHEMA = Params.model_json_schema()


def _refused(params: dict[str, Any]) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as err:
        check(SCHEMA, params, "resmlp")
    return err.value


def test_defaults_are_filled_in_as_pydantic_fills_them() -> None:
    assert check(SCHEMA, {"width": 3}, "resmlp") == Params(width=3).model_dump()
    assert check(SCHEMA, {}, "resmlp") == Params().model_dump()


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"width": 0}, "params.width", "less than the minimum of 1"),
        ({"width": 64.0}, "params.width", "is not of type 'integer'"),
        ({"width": True}, "params.width", "is not of type 'integer'"),
        ({"width": "64"}, "params.width", "is not of type 'integer'"),
        ({"widths": [8, "x"]}, "params.widths[1]", "is not of type 'integer'"),
        ({"widths": [1, 2, 3, 4, 5]}, "params.widths", "is too long"),
        ({"dropout": 1.0}, "params.dropout", "maximum"),
        ({"mode": "medium"}, "params.mode", "does not match"),
    ],
)
def test_a_wrong_value_names_its_field(params: dict[str, Any], field: str, words: str) -> None:
    error = _refused(params)
    assert error.field == field
    assert words in error.detail


def test_an_unknown_parameter_is_named_with_the_one_it_was_probably_meant_to_be() -> None:
    error = _refused({"widht": 3})
    assert error.field == "params.widht"
    assert error.detail == "params.widht: resmlp has no such parameter; did you mean `width`?"


def test_a_schema_that_is_not_json_schema_is_the_familys_fault_not_the_requests() -> None:
    with pytest.raises(InvalidSpec) as err:
        check({"type": 12}, {}, "broken")
    assert err.value.field == "family"
    assert "not valid JSON Schema" in err.value.detail
