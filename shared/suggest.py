"""Near misses: an unknown field answered with the known one it was probably meant to be
(``training.epoch`` → "did you mean `epochs`?"), for the API's 422s and for a family's
parameters."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """``"; did you mean `X`?"`` for the known name closest to ``name``, or ``""`` when
    none is close enough."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside ``Annotated``, an optional, a union or
    a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin is Annotated:
        return _model_in(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, tuple):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def fields_at(model: type[BaseModel], path: Sequence[int | str]) -> list[str]:
    """The field names of the model at ``path`` (a pydantic error's ``loc`` without its
    last part) inside ``model``; list indices and union tags are stepped over. Empty when
    the path leads to no model."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None:
            return []
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:
            current = _model_in(field.annotation)
    return list(current.model_fields) if current is not None else []


def unknown_field(root: Any, loc: Sequence[int | str]) -> str:
    """The suggestion for an unknown field at ``loc`` inside ``root`` (a model, or an
    annotation that holds one; see ``did_you_mean``)."""
    model = _model_in(root)
    if model is None or not loc:
        return ""
    return did_you_mean(loc[-1], fields_at(model, loc[:-1]))
