"""A plugin family's parameters checked against the JSON Schema its workers reported, the
way pydantic checks a built-in family's: defaults filled in, the first error raised as
``InvalidSpec`` naming the field (``params.blocks``, ``params.widths[2]``).

JSON Schema counts ``64.0`` as an integer; pydantic does not, and neither does this
check, so that a parameter the family's own code will read as an ``int`` never arrives
as a float.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from shared.errors import InvalidSpec
from shared.suggest import did_you_mean


def _is_integer(_: Any, value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TYPES = Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer)
_Validator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)


def _field(path: Any) -> str:
    out = "params"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _unknown(error: ValidationError, schema: Mapping[str, Any], family: str) -> InvalidSpec:
    """An additional property: name it, and the parameter it was probably meant to be."""
    given = error.instance if isinstance(error.instance, dict) else {}
    allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    extra = next((k for k in given if k not in allowed), "")
    field = _field([*error.absolute_path, extra])
    near = did_you_mean(extra, allowed)
    return InvalidSpec(f"{field}: {family} has no such parameter{near}", field=field)


@functools.lru_cache(maxsize=128)
def _validator(schema_json: str) -> Any:
    """A checked validator for one schema (each family's is checked once, not per job)."""
    schema = json.loads(schema_json)
    _Validator.check_schema(schema)
    return _Validator(schema)


def check(schema: Mapping[str, Any], params: Mapping[str, Any], family: str) -> dict[str, Any]:
    """``params`` with the schema's top-level defaults filled in; InvalidSpec naming the
    first field that is wrong."""
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(params)))
    except SchemaError as exc:
        raise InvalidSpec(
            f"family '{family}' reported a parameter schema that is not valid JSON Schema: "
            f"{exc.message}",
            field="family",
        ) from None
    if error is not None:
        if error.validator == "additionalProperties":
            raise _unknown(error, schema, family)
        field = _field(error.absolute_path)
        raise InvalidSpec(f"{field}: {error.message}", field=field)
    filled = {
        name: prop["default"]
        for name, prop in schema.get("properties", {}).items()
        if isinstance(prop, dict) and "default" in prop
    }
    return filled | dict(params)
