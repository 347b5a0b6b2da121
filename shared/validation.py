"""Whole-request validation: whether a request that pydantic accepted field by field can
run, decided torch-free, raising ``InvalidSpec`` that names the field at fault.

``resolve_train`` turns a ``TrainRequest`` into the ``TrainSpec`` a worker runs;
``check_inputs`` checks prediction inputs against what a model version takes, and
``check_tensor_shape`` is the one check of a typed tensor's shape, kind and width that
the API and the workers share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, cast

from pydantic import TypeAdapter, ValidationError

from shared import param_schema
from shared.config import get_settings
from shared.datasets import BUILTIN_DATASETS, BuiltinDataset
from shared.db.datasets import file_of
from shared.errors import InvalidSpec
from shared.families import FAMILIES, AnyFamily, DescribedFamily, Family, InputShape, Task
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
from shared.suggest import did_you_mean, unknown_field

_tensor_shape: TypeAdapter[list[int]] = TypeAdapter(TensorShape)


def _field_of(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _family(name: str) -> Family:
    family = FAMILIES.get(name)
    if family is None:
        unknown_family(name, FAMILIES)
    return family


def unknown_family(name: str, known: Iterable[str]) -> NoReturn:
    """Refuse a family that nothing has registered, naming those that exist."""
    near = did_you_mean(name, known)
    names = ", ".join(sorted(known))
    raise InvalidSpec(
        f"unknown family '{name}'{near}; known: {names} (a plugin's family is known once a "
        "worker that has it has started)",
        field="family",
    )


def check_params(family: AnyFamily, params: dict[str, Any]) -> dict[str, Any]:
    """The family's parameters, defaults filled in: by its own pydantic model where its
    code is here, else by the JSON Schema its workers reported."""
    if isinstance(family, DescribedFamily):
        return param_schema.check(family.info.params, params, family.name)
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


def _builtin(name: str, family: AnyFamily) -> BuiltinDataset:
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


def _decide_task(req: TrainRequest, family: AnyFamily, params: dict[str, Any]) -> tuple[Task, str]:
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


def _check_images(inputs: Inputs, field: str, shape: InputShape | None = None) -> InputShape:
    """Every row nested lists [channels][height][width] of finite numbers, all of one shape
    (the first row's if not given); returns the shape."""
    for i, row in enumerate(inputs):
        got = _image_shape_of(row)
        if got is None:
            raise InvalidSpec(
                "expected an image as nested lists [channels][height][width] of one shape",
                field=f"{field}[{i}]",
            )
        shape = got if shape is None else shape
        if got != shape:
            raise InvalidSpec(
                f"the image is of shape {list(got)}; expected {list(shape)} "
                "[channels][height][width]",
                field=f"{field}[{i}]",
            )
        planes = cast(list[list[list[float]]], row)
        if not all(
            isinstance(v, int | float) and math.isfinite(v) for p in planes for ln in p for v in ln
        ):
            raise InvalidSpec("values must be finite numbers", field=f"{field}[{i}]")
    return shape or ()


def _image_shape_of(row: object) -> InputShape | None:
    """(C, H, W) of nested lists whose planes and lines each have one length, else None."""
    if not isinstance(row, list) or not row or not all(isinstance(p, list) and p for p in row):
        return None
    lines = [line for plane in row for line in plane]
    if not all(isinstance(line, list) and line for line in lines):
        return None
    height, width = len(row[0]), len(lines[0])
    if any(len(p) != height for p in row) or any(len(line) != width for line in lines):
        return None
    return (len(row), height, width)


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
    if input_kind == "image":
        _check_images(data.inputs, f"{field}.inputs")
    if task == "regression":
        for i, y in enumerate(data.labels):
            if isinstance(y, str) or not math.isfinite(y):
                raise InvalidSpec(
                    "regression targets must be finite numbers", field=f"{field}.labels[{i}]"
                )
    elif len({str(y) for y in data.labels}) < 2:
        raise InvalidSpec("classification needs at least two classes", field=f"{field}.labels")


def _check_size(req: TrainRequest, family: AnyFamily, params: dict[str, Any], task: Task) -> None:
    if req.dataset.builtin is not None:
        builtin = BUILTIN_DATASETS[req.dataset.builtin]
        shape, n_classes = builtin.shape, builtin.n_classes
    else:
        inline = req.dataset.inline or InlineData(inputs=[""], labels=[0])
        shape = _row_shape(inline.inputs[0])
        n_classes = 1 if task == "regression" else len({str(y) for y in inline.labels})
    check_count(family, params, shape, family.n_outputs(task, n_classes))


def _row_shape(row: Any) -> InputShape:
    """The shape of one inline row: () for a text, (features,), or (C, H, W)."""
    if isinstance(row, str):
        return ()
    if row and isinstance(row[0], list):
        return (len(row), len(row[0]), len(row[0][0]))
    return (len(row),)


def input_shape(input_schema: Mapping[str, Any]) -> InputShape:
    """A row's shape from what a model takes: (features,), (C, H, W), or () for texts."""
    if input_schema.get("kind") == "image":
        return tuple(int(n) for n in input_schema["shape"])
    if input_schema.get("kind") == "features":
        return (int(input_schema["n_features"]),)
    return ()


def check_count(
    family: AnyFamily, params: dict[str, Any], shape: InputShape, n_outputs: int
) -> None:
    """Refuse a model over TORCHQUEUE_MAX_MODEL_PARAMS, counted by the family's own code
    (a family known by its description alone is counted on the worker)."""
    if isinstance(family, DescribedFamily):
        return
    count = family.parameter_count(params, shape, n_outputs)
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


def _feature_width(
    data: DatasetSpec, family: AnyFamily, columns: dict[str, Any], where: str
) -> int:
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


def _image_shape(
    data: DatasetSpec, family: AnyFamily, columns: dict[str, Any], where: str
) -> InputShape:
    """An image family's input: one numeric array column of rows [C, H, W], or [H, W]
    (one channel); returns the rows' shape as [C, H, W]."""
    if data.text is not None:
        raise InvalidSpec(
            f"family '{family.name}' takes an array of images, not texts", field="dataset.text"
        )
    features = data.features or [n for n in columns if n != data.label]
    field = "dataset.features"
    if len(features) != 1:
        has = "" if data.features else f" ({where} has {', '.join(features) or 'none'} besides "
        raise InvalidSpec(
            f"family '{family.name}' takes one array of images: name it in dataset.features"
            + (f"{has}the label)" if has else ""),
            field=field,
        )
    name = features[0]
    column = columns.get(name)
    if column is None:
        raise InvalidSpec(f"{where} has no column '{name}'", field=field)
    shape = [int(n) for n in column.get("shape") or []]
    if not column["type"].startswith(_NUMERIC) or len(shape) not in (2, 3):
        raise InvalidSpec(
            f"column '{name}' holds {column['type']} values of shape {shape}; family "
            f"'{family.name}' takes an array of numbers [rows, channels, height, width] (or "
            "[rows, height, width], one channel), as an .npy or .npz data set holds",
            field=field,
        )
    return tuple(shape) if len(shape) == 3 else (1, *shape)


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
    req: TrainRequest, family: AnyFamily, params: dict[str, Any], found: DatasetVersionOut
) -> tuple[Task, str, InputShape | None, int, str | None]:
    """Check a stored data set's columns against the request; return the task, the field
    that decided it, a row's input shape (None for texts, and when not yet known), the
    number of classes (1 for a regression) and a text family's column of texts."""
    data = req.dataset
    where = f"data set '{found.name}' version {found.version}"
    if found.columns is None:  # a URL source that no worker has read yet
        if params.get("task", "auto") == "auto" and len(family.tasks) > 1:
            raise InvalidSpec(
                f"{where} has not been read yet (a URL source): set params.task to "
                "classification or regression",
                field="params.task",
            )
        return params.get("task", family.tasks[0]), "params.task", None, 1, data.text
    columns = {c["name"]: c for c in found.columns}
    label = data.label or ""
    if label not in columns:
        raise InvalidSpec(
            f"{where} has no column '{label}'; it has {', '.join(columns)}", field="dataset.label"
        )
    shape: InputShape | None = None
    text = None
    if family.input_kind == "text":
        text = _text_column(data, columns, where)
    elif family.input_kind == "image":
        shape = _image_shape(data, family, columns, where)
    else:
        shape = (_feature_width(data, family, columns, where),)
    counts = (found.value_counts or {}).get(label)
    task, decided_by, n_classes = _label_task(params, label, columns[label]["type"], counts)
    return task, decided_by, shape, n_classes, text


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
    family: AnyFamily | None = None,
) -> TrainSpec:
    """Check the request as a whole; raise ``InvalidSpec`` naming the field that is wrong.
    ``found``: the stored data set version a request names (``validation``: its second
    one), and ``family`` the family it names (default: a built-in's), looked up by the
    caller."""
    family = family or _family(req.family)
    params = check_params(family, req.params)
    if req.dataset.name is not None:
        if found is None:
            raise InvalidSpec(f"no data set '{req.dataset.name}'", field="dataset.name")
        task, decided_by, shape, n_classes, text = _stored(req, family, params, found)
        family.check_task(task, decided_by)
        if validation is not None:
            _same_columns(found, validation)
        if "task" in params:
            params["task"] = task
        if shape is not None and math.prod(shape) > 0:
            check_count(family, params, shape, family.n_outputs(task, n_classes))
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
    version takes: within the wire's limits, a numeric or image model, and its rows'
    shape ([rows, features], or [rows, channels, height, width]). Returns the shape."""
    image = input_schema.get("kind") == "image"
    wanted = f"[rows, {', '.join(str(n) for n in input_schema['shape'])}]" if image else ""
    try:
        checked = _tensor_shape.validate_python(shape, strict=True)
    except ValidationError as exc:
        what = f"{wanted}, [rows, channels, height, width]" if image else "[rows, features]"
        limits = [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        limit = next((f"; {m}" for m in limits if "values" in m), "")
        raise InvalidSpec(f"a tensor's shape is {what}{limit}", field="inputs.shape") from None
    if input_schema.get("kind") == "text":
        raise InvalidSpec(
            "this model takes texts (strings); typed tensors are for numeric models",
            field="inputs",
        )
    if image:
        if checked[1:] != [int(n) for n in input_schema["shape"]]:
            raise InvalidSpec(
                f"shape {checked} does not fit the model, which takes images {wanted}",
                field="inputs.shape",
            )
        return checked
    if len(checked) != 2:
        raise InvalidSpec(
            f"shape {checked}: the model takes feature rows [rows, {input_schema['n_features']}]",
            field="inputs.shape",
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
    if input_schema.get("kind") == "image":
        _check_images(inputs, "inputs", tuple(int(n) for n in input_schema["shape"]))
        return
    _check_rows(inputs, "inputs", int(input_schema["n_features"]))
