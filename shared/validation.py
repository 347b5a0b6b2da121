"""Whole-request validation: whether a request that pydantic accepted field by field can
run, decided torch-free, raising ``InvalidSpec`` that names the field at fault.

``resolve_train`` turns a ``TrainRequest`` into the ``TrainSpec`` a worker runs;
``check_inputs`` checks prediction inputs against what a model version takes, and
``check_tensor_shape`` is the one check of a typed tensor's shape, kind and width that
the API and the workers share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from shared.config import get_settings
from shared.datasets import BUILTIN_DATASETS, BuiltinDataset
from shared.db.datasets import file_of
from shared.errors import InvalidSpec
from shared.families import FAMILIES, Family, Task
from shared.schemas import (
    DatasetSpec,
    DatasetVersionOut,
    InlineData,
    Inputs,
    RunDataset,
    Tensor,
    TensorShape,
    TrainRequest,
    TrainSpec,
)
from shared.suggest import unknown_field

_tensor_shape: TypeAdapter[list[int]] = TypeAdapter(TensorShape)


def _field_of(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _family(name: str) -> Family:
    family = FAMILIES.get(name)
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise InvalidSpec(f"unknown family '{name}'; known: {known}", field="family")
    return family


def _params(family: Family, params: dict[str, Any]) -> dict[str, Any]:
    """The family's parameters, defaults filled in."""
    try:
        return family.params.model_validate(params).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_of(("params", *err["loc"]))
        if err["type"] == "extra_forbidden":
            near = unknown_field(family.params, err["loc"])
            detail = f"{field}: {family.name} has no such parameter{near}"
            raise InvalidSpec(detail, field=field) from None
        raise InvalidSpec(err["msg"], field=field) from None


def _builtin(name: str, family: Family) -> BuiltinDataset:
    builtin = BUILTIN_DATASETS.get(name)
    if builtin is None:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise InvalidSpec(
            f"unknown built-in data set '{name}'; built-in: {known}", field="dataset.builtin"
        )
    if builtin.input_kind != family.input_kind:
        raise InvalidSpec(
            f"data set '{builtin.name}' holds {builtin.input_kind} but family "
            f"'{family.name}' takes {family.input_kind}",
            field="dataset.builtin",
        )
    return builtin


def _decide_task(req: TrainRequest, family: Family, params: dict[str, Any]) -> tuple[Task, str]:
    """The task, and the field that decided it: a built-in data set's own task, else
    the family's choice from its parameters and the labels."""
    if req.dataset.builtin is not None:
        return BUILTIN_DATASETS[req.dataset.builtin].task, "dataset.builtin"
    labels = req.dataset.inline.labels if req.dataset.inline else []
    field = "params.task" if params.get("task", "auto") != "auto" else "dataset.inline.labels"
    return family.decide_task(params, labels), field


def _check_rows(inputs: Inputs, field: str, width: int | None = None) -> None:
    """Every row a list of finite numbers, all of one width (the first row's if not given)."""
    for i, row in enumerate(inputs):
        if isinstance(row, str):
            raise InvalidSpec("expected a row of numbers, not a text", field=f"{field}[{i}]")
        width = len(row) if width is None else width
        if len(row) != width:
            raise InvalidSpec(f"row has {len(row)} values; expected {width}", field=f"{field}[{i}]")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in row):
            raise InvalidSpec("values must be finite numbers", field=f"{field}[{i}]")


def _check_inline(data: InlineData, input_kind: str, task: Task) -> None:
    field = "dataset.inline"
    if len(data.inputs) != len(data.labels):
        raise InvalidSpec(
            f"{len(data.inputs)} inputs but {len(data.labels)} labels; give one label per input",
            field=f"{field}.labels",
        )
    if input_kind == "text" and not isinstance(data.inputs[0], str):
        raise InvalidSpec("this family takes texts (strings)", field=f"{field}.inputs")
    if input_kind == "features":
        _check_rows(data.inputs, f"{field}.inputs")
    if task == "regression":
        for i, y in enumerate(data.labels):
            if isinstance(y, str) or not math.isfinite(y):
                raise InvalidSpec(
                    "regression targets must be finite numbers", field=f"{field}.labels[{i}]"
                )
    elif len({str(y) for y in data.labels}) < 2:
        raise InvalidSpec("classification needs at least two classes", field=f"{field}.labels")


def _check_size(req: TrainRequest, family: Family, params: dict[str, Any], task: Task) -> None:
    if req.dataset.builtin is not None:
        builtin = BUILTIN_DATASETS[req.dataset.builtin]
        n_features, n_classes = builtin.n_features, builtin.n_classes
    else:
        inline = req.dataset.inline or InlineData(inputs=[""], labels=[0])
        first = inline.inputs[0]
        n_features = 0 if isinstance(first, str) else len(first)
        n_classes = 1 if task == "regression" else len({str(y) for y in inline.labels})
    _check_count(family, params, n_features, family.n_outputs(task, n_classes))


def _check_count(family: Family, params: dict[str, Any], n_features: int, n_outputs: int) -> None:
    count = family.parameter_count(params, n_features, n_outputs)
    limit = get_settings().max_model_params
    if count > limit:
        raise InvalidSpec(
            f"the model would have {count:,} parameters; the limit is {limit:,}", field="params"
        )


_FRACTIONAL = ("float", "double", "halffloat", "decimal")
_NUMERIC = ("int", "uint", "bool", *_FRACTIONAL)
_TEXT = ("string", "large_string", "utf8", "large_utf8")


def _width(column: Mapping[str, Any]) -> int:
    """Features a column gives each row: 1, or an array column's elements."""
    return math.prod(int(n) for n in column.get("shape") or [])


def _text_column(data: DatasetSpec, columns: dict[str, Any], where: str) -> str:
    """A text family's column of texts: the one named, else the only one there is."""
    label = data.label or ""
    texts = [n for n, c in columns.items() if n != label and c["type"] in _TEXT]
    text = data.text or (texts[0] if len(texts) == 1 else None)
    if text is None:
        raise InvalidSpec(
            f"name the column of texts among {', '.join(texts) or '(none)'}", field="dataset.text"
        )
    if text not in columns or columns[text]["type"] not in _TEXT:
        raise InvalidSpec(f"{where} has no column of texts '{text}'", field="dataset.text")
    return text


def _feature_width(data: DatasetSpec, family: Family, columns: dict[str, Any], where: str) -> int:
    """The input width of the feature columns (named, else every column but the label),
    each of which must hold numbers."""
    if data.text is not None:
        raise InvalidSpec(
            f"family '{family.name}' takes feature columns, not texts", field="dataset.text"
        )
    features = data.features or [n for n in columns if n != data.label]
    for i, name in enumerate(features):
        field = f"dataset.features[{i}]" if data.features else "dataset.features"
        if name not in columns:
            raise InvalidSpec(f"{where} has no column '{name}'", field=field)
        if not columns[name]["type"].startswith(_NUMERIC):
            raise InvalidSpec(
                f"column '{name}' holds {columns[name]['type']} values, not numbers; "
                "name the feature columns in dataset.features",
                field=field,
            )
    return sum(_width(columns[n]) for n in features)


def _label_task(
    params: dict[str, Any], label: str, kind: str, counts: dict[str, int] | None
) -> tuple[Task, str, int]:
    """The task (asked for, else regression for a fractional label column), the field
    that decided it, and the number of classes (1 for a regression)."""
    asked = params.get("task", "auto")
    fractional = kind.startswith(_FRACTIONAL)
    task: Task = asked if asked != "auto" else ("regression" if fractional else "classification")
    decided_by = "params.task" if asked != "auto" else "dataset.label"
    if task == "regression":
        if not kind.startswith(_NUMERIC):
            raise InvalidSpec(
                f"regression needs numbers; column '{label}' holds {kind}", field="dataset.label"
            )
        return task, decided_by, 1
    if counts is None:
        raise InvalidSpec(
            f"column '{label}' has too many distinct values to be classes (over 1000, or "
            "fractional numbers): for a regression set params.task",
            field="dataset.label",
        )
    if len(counts) < 2:
        raise InvalidSpec("classification needs at least two classes", field="dataset.label")
    return task, decided_by, len(counts)


def _stored(
    req: TrainRequest, family: Family, params: dict[str, Any], found: DatasetVersionOut
) -> tuple[Task, str, int | None, int, str | None]:
    """Check a stored data set's columns against the request; return the task, the field
    that decided it, the input width (None for texts, 0 when not yet known), the number
    of classes (1 for a regression) and a text family's column of texts."""
    data = req.dataset
    where = f"data set '{found.name}' version {found.version}"
    if found.columns is None:  # a URL source that no worker has read yet
        if params.get("task", "auto") == "auto" and len(family.tasks) > 1:
            raise InvalidSpec(
                f"{where} has not been read yet (a URL source): set params.task to "
                "classification or regression",
                field="params.task",
            )
        return params.get("task", family.tasks[0]), "params.task", 0, 1, data.text
    columns = {c["name"]: c for c in found.columns}
    label = data.label or ""
    if label not in columns:
        raise InvalidSpec(
            f"{where} has no column '{label}'; it has {', '.join(columns)}", field="dataset.label"
        )
    width, text = None, None
    if family.input_kind == "text":
        text = _text_column(data, columns, where)
    else:
        width = _feature_width(data, family, columns, where)
    counts = (found.value_counts or {}).get(label)
    task, decided_by, n_classes = _label_task(params, label, columns[label]["type"], counts)
    return task, decided_by, width, n_classes, text


def _same_columns(found: DatasetVersionOut, other: DatasetVersionOut) -> None:
    """A validation data set must have the training set's columns, of the same types."""
    if found.columns is None or other.columns is None:
        return
    theirs = {c["name"]: c["type"] for c in other.columns}
    for column in found.columns:
        if theirs.get(column["name"]) != column["type"]:
            raise InvalidSpec(
                f"the validation data set lacks column '{column['name']}' of "
                f"{column['type']} values",
                field="dataset.validation",
            )


def resolve_train(
    req: TrainRequest,
    found: DatasetVersionOut | None = None,
    validation: DatasetVersionOut | None = None,
) -> TrainSpec:
    """Check the request as a whole; raise ``InvalidSpec`` naming the field that is wrong.
    ``found``: the stored data set version a request names (``validation``: its second
    one), looked up by the caller."""
    family = _family(req.family)
    params = _params(family, req.params)
    if req.dataset.name is not None:
        if found is None:
            raise InvalidSpec(f"no data set '{req.dataset.name}'", field="dataset.name")
        task, decided_by, width, n_classes, text = _stored(req, family, params, found)
        family.check_task(task, decided_by)
        if validation is not None:
            _same_columns(found, validation)
        if "task" in params:
            params["task"] = task
        if width is not None and width > 0:
            _check_count(family, params, width, family.n_outputs(task, n_classes))
        dataset = RunDataset.model_validate(
            req.dataset.model_dump(exclude_unset=True)
            | {"version": found.version, "text": text, "file": file_of(found)}
            | ({"validation_file": file_of(validation)} if validation else {})
        )
        return TrainSpec(
            model_name=req.model_name,
            family=family.name,
            params=params,
            task=task,
            dataset=dataset,
            training=req.training,
            resources=req.resources,
        )
    if req.dataset.builtin is not None:
        _builtin(req.dataset.builtin, family)
    task, decided_by = _decide_task(req, family, params)
    family.check_task(task, decided_by)
    if req.dataset.inline is not None:
        _check_inline(req.dataset.inline, family.input_kind, task)
    if "task" in params:
        params["task"] = task
    _check_size(req, family, params, task)
    return TrainSpec(
        model_name=req.model_name,
        family=family.name,
        params=params,
        task=task,
        dataset=RunDataset.model_validate(req.dataset.model_dump(exclude_unset=True)),
        training=req.training,
        resources=req.resources,
    )


def check_tensor_shape(shape: object, input_schema: Mapping[str, Any]) -> list[int]:
    """Check a typed tensor's ``shape`` (as sent: not yet trusted) against what a model
    version takes: [rows, features] within the wire's limits, a numeric model, and its
    number of features. Returns the shape."""
    try:
        checked = _tensor_shape.validate_python(shape, strict=True)
    except ValidationError:
        raise InvalidSpec("a tensor's shape is [rows, features]", field="inputs.shape") from None
    if input_schema.get("kind") == "text":
        raise InvalidSpec(
            "this model takes texts (strings); typed tensors are for numeric models",
            field="inputs",
        )
    width = int(input_schema["n_features"])
    if checked[1] != width:
        raise InvalidSpec(
            f"shape {checked} has {checked[1]} features; the model takes {width}",
            field="inputs.shape",
        )
    return checked


def check_inputs(inputs: list[Any] | Tensor, input_schema: Mapping[str, Any]) -> None:
    """Check prediction inputs against what a model version takes."""
    if isinstance(inputs, Tensor):
        check_tensor_shape(inputs.shape, input_schema)
        return
    if input_schema.get("kind") == "text":
        for i, x in enumerate(inputs):
            if not isinstance(x, str):
                raise InvalidSpec("this model takes texts (strings)", field=f"inputs[{i}]")
        return
    _check_rows(inputs, "inputs", int(input_schema["n_features"]))
