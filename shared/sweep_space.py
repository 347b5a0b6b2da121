"""A sweep's search space against its base training job: checked before anything runs,
and applied to make each trial's job.

Every value a dimension can take at its ends (a range's low and high, each of a
choice's values) is put into the base request and resolved as the API resolves a
training job, so that a space the family's parameters or the training settings cannot
take is refused with 422 naming ``space.<key>``, not found out by a failed trial.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from shared.errors import InvalidSpec
from shared.families import AnyFamily
from shared.schemas import DatasetVersionOut, TrainRequest, TrainSpec
from shared.sweep_schemas import Choice, Distribution, IntRange, SweepRequest
from shared.validation import resolve_train

# The most points a grid may hold (the product of its dimensions' values).
MAX_GRID = 100_000
TRAINING_KEYS = frozenset(
    {"epochs", "batch_size", "learning_rate", "optimizer", "momentum", "weight_decay"}
)


def apply(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The base request with each ``params.X`` / ``training.X`` set to its value."""
    out = copy.deepcopy(base)
    for key, value in values.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def _ends(dist: Distribution) -> list[Any]:
    if isinstance(dist, Choice):
        return list(dist.values)
    if isinstance(dist, IntRange):
        return [dist.low, dist.high]
    return [dist.low, dist.high]


def grid(req: SweepRequest) -> dict[str, list[Any]]:
    """Each dimension's values, for the grid sampler; InvalidSpec naming a continuous one."""
    out: dict[str, list[Any]] = {}
    for key, dist in req.space.items():
        if isinstance(dist, Choice):
            out[key] = list(dist.values)
        elif isinstance(dist, IntRange) and not dist.log:
            out[key] = list(dist.values())
        else:
            raise InvalidSpec(
                "the grid sampler takes choices and integer ranges only; use tpe or random "
                "for a continuous range",
                field=f"space.{key}",
            )
    return out


def _check_grid(req: SweepRequest) -> None:
    points = math.prod(len(v) for v in grid(req).values())
    if points > MAX_GRID:
        raise InvalidSpec(f"the grid has {points:,} points; at most {MAX_GRID:,}", field="space")
    if req.trials > points:
        raise InvalidSpec(f"the grid has {points} points: at most {points} trials", field="trials")


def _checked(
    key: str, value: Any, base: dict[str, Any], resolve: Callable[[TrainRequest], TrainSpec]
) -> None:
    body = apply(base, {key: value})
    shown = json.dumps(value)
    try:
        req = TrainRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidSpec(f"{key} = {shown}: {err['msg']}", field=f"space.{key}") from None
    try:
        resolve(req)
    except InvalidSpec as exc:
        raise InvalidSpec(f"{key} = {shown}: {exc.detail}", field=f"space.{key}") from None


def check(
    req: SweepRequest,
    family: AnyFamily,
    found: DatasetVersionOut | None = None,
    validation: DatasetVersionOut | None = None,
) -> TrainSpec:
    """Refuse a space that cannot run, naming the dimension; return the base's spec."""
    if req.base.callback_url is not None:
        raise InvalidSpec(
            "a sweep's trials take no callback: subscribe a webhook to sweep.finished",
            field="base.callback_url",
        )
    base = req.base.model_dump(mode="json", exclude_unset=True)

    def resolve(one: TrainRequest) -> TrainSpec:
        return resolve_train(one, found, validation, family)

    spec = resolve(req.base)
    for key, dist in req.space.items():
        section, _, name = key.partition(".")
        if section == "training" and name not in TRAINING_KEYS:
            known = ", ".join(sorted(TRAINING_KEYS))
            raise InvalidSpec(
                f"a sweep searches the training settings {known}; not {name}",
                field=f"space.{key}",
            )
        if section == "params" and name not in spec.params:
            raise InvalidSpec(
                f"{family.name} has no parameter '{name}'; it has {', '.join(spec.params)}",
                field=f"space.{key}",
            )
        for value in _ends(dist):
            _checked(key, value, base, resolve)
    if req.sampler == "grid":
        _check_grid(req)
    if req.promote == "latest":
        raise InvalidSpec("'latest' is always the newest version; it cannot be an alias",
                          field="promote")  # fmt: skip
    return spec
