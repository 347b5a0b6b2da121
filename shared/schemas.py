"""The wire: what clients send, what the API answers, and the specs that workers run.

A request is validated twice over: field by field by pydantic, here, then as a whole by
``shared.validation`` (family, parameters, data set and their fit), which returns the
``TrainSpec`` stored on the job and run by the worker unchanged.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.families import FamilyInfo, InputKind, Task
from shared.jobstate import JobEventKind, JobKind, JobState
from shared.routing import DEFAULT_POOL, POOL_PATTERN

NAME_MAX = 128
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ModelName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="letters, digits, '.', '_' and '-'; at most 128; no leading punctuation",
        examples=["reviews"],
    ),
]
DatasetName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="letters, digits, '.', '_' and '-'; at most 128; no leading punctuation",
        examples=["houses"],
    ),
]
Label = int | str | float
FeatureRow = Annotated[list[float], Field(min_length=1, max_length=10_000)]
# An image as nested lists [channels][height][width].
MAX_IMAGE_SIDE = 4096
ImageRow = Annotated[
    list[
        Annotated[
            list[Annotated[list[float], Field(min_length=1, max_length=MAX_IMAGE_SIDE)]],
            Field(min_length=1, max_length=MAX_IMAGE_SIDE),
        ]
    ],
    Field(min_length=1, max_length=1024),
]
Text = Annotated[str, Field(max_length=20_000)]
Inputs = list[Text] | list[FeatureRow] | list[ImageRow]

MAX_ROWS = 200_000
MAX_PREDICT_ROWS = 10_000
# Numbers that reach a database column stay within a 32-bit integer.
MAX_VERSION = MAX_OFFSET = 2**31 - 1
# A model's alias (production, staging, best): what ``latest`` also matches, though
# ``latest`` itself is never an alias (``shared.db.aliases`` refuses it).
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
AliasName = Annotated[
    str,
    Field(
        pattern=ALIAS_PATTERN,
        description="a lowercase letter, then lowercase letters, digits, '_' or '-'; at most 32",
        examples=["production"],
    ),
]
# A model version as a request names it: a number, latest, or an alias (each name resolved
# when the request is served).
ModelVersionRef = Annotated[int, Field(ge=1, le=MAX_VERSION)] | AliasName
# Early stopping's patience unless a job says otherwise (null turns it off): long enough
# for a noisy validation loss to improve again, short enough that a 20-epoch job whose best
# epoch comes early stops before the end.
DEFAULT_PATIENCE = 10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InlineData(_Strict):
    inputs: Annotated[Inputs, Field(min_length=1, max_length=MAX_ROWS)]
    labels: Annotated[list[Label], Field(min_length=1, max_length=MAX_ROWS)]


DatasetVersion = Annotated[int, Field(ge=1, le=MAX_VERSION)] | Literal["latest"]
ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


class DatasetRef(_Strict):
    """A stored data set's version: a number, or latest (resolved when the job is
    submitted, so that a job runs on the version it was given)."""

    name: DatasetName
    version: DatasetVersion = "latest"


class DatasetSpec(_Strict):
    """Exactly one of ``builtin`` (a name), ``inline`` (inputs and labels) or ``name`` (a
    stored data set, with its ``label`` column)."""

    builtin: str | None = Field(None, examples=["iris"])
    inline: InlineData | None = None
    name: DatasetName | None = Field(None, description="a stored data set (POST /v1/datasets)")
    version: DatasetVersion = "latest"
    label: ColumnName | None = Field(None, description="with name: the column to predict")
    features: list[ColumnName] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="with name: the input columns (default: every column but the label "
        "and the text)",
    )
    text: ColumnName | None = Field(
        None, description="with name, for a text family: the column of texts"
    )
    validation: DatasetRef | None = Field(
        None,
        description="with name: a second data set, with the same columns, to validate on "
        "instead of a split of this one (training.validation_fraction)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("builtin", "inline", "name") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'builtin', 'inline' or 'name'")
        if self.name is None:
            # Compared with the defaults, not the fields set: a spec dumped whole and read
            # back (the job's record) is the same spec.
            fields = ("label", "features", "text", "validation")
            stray = [k for k in fields if getattr(self, k) is not None]
            if self.version != "latest":
                stray.append("version")
            if stray:
                raise ValueError(f"'{stray[0]}' goes with 'name' only")
        elif self.label is None:
            raise ValueError("name the label column: 'label'")
        return self


class DatasetFile(_Strict):
    """Where a data set version's bytes are and what they must hash to: what a worker
    reads. ``sha256`` is None for a URL source never read yet (its first read records
    it); ``format`` is the stored one (parquet, npy, npz), or the URL source's."""

    name: str
    version: int
    uri: str
    format: str
    sha256: str | None
    source: Literal["upload", "url", "inline"] = "upload"


class RunDataset(DatasetSpec):
    """A ``DatasetSpec`` as the worker runs it: a stored data set's version resolved,
    with its file (and its validation data set's)."""

    file: DatasetFile | None = None
    validation_file: DatasetFile | None = None

    def lineage(self) -> dict[str, Any] | None:
        """What a model version trained on this records: the data set version and its
        sha256 (None for a built-in set)."""
        if self.file is None:
            return None
        return {"name": self.file.name, "version": self.file.version, "sha256": self.file.sha256}


class TrainingConfig(_Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.0, ge=0, lt=1, description="for sgd")
    weight_decay: float = Field(0.0, ge=0, le=1)
    validation_fraction: float = Field(0.2, ge=0, le=0.9)
    early_stopping_patience: int | None = Field(
        DEFAULT_PATIENCE,
        ge=1,
        le=10_000,
        description="stop after this many epochs without a lower validation loss, and keep "
        f"the weights of the epoch that had it (default {DEFAULT_PATIENCE}; none without a "
        "validation split); null: train every epoch and keep the last weights",
    )
    checkpoint_every_seconds: float | None = Field(
        None,
        ge=0,
        le=86_400,
        description="checkpoint at the first epoch end this long after the last one "
        "(default: after epoch 1, then as often as costs at most 1% of the time; 0: every "
        "epoch)",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _no_split_no_patience(self) -> TrainingConfig:
        # The default needs a validation split; one given explicitly is kept as given.
        if self.validation_fraction == 0 and "early_stopping_patience" not in self.model_fields_set:
            self.early_stopping_patience = None
        return self


PoolName = Annotated[
    str,
    Field(pattern=POOL_PATTERN, description="a pool of workers, e.g. a100"),
]
Priority = Annotated[
    int, Field(ge=0, le=9, description="0 to 9; higher runs first among jobs of one queue")
]


class Resources(_Strict):
    """What a training job needs; its queue follows from these (``shared.routing``)."""

    devices: int = Field(1, ge=1, le=64, description="devices on one worker")
    pool: PoolName = DEFAULT_POOL
    min_device_memory_gb: float = Field(0, ge=0, le=1024)


class PredictResources(_Strict):
    pool: PoolName = DEFAULT_POOL


MaxAttempts = Annotated[
    int, Field(ge=1, le=20, description="runs before a job whose worker keeps dying fails")
]


class TrainRequest(_Strict):
    model_name: ModelName
    family: str = Field(examples=["mlp"])
    params: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetSpec
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    resources: Resources = Field(default_factory=Resources)
    priority: Priority = 0
    max_attempts: MaxAttempts = 3
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="where to POST the job's end (a webhook for this job alone, signed with "
        "the secret in the answer's callback)",
    )


class TrialRef(_Strict):
    """The sweep trial a training job runs."""

    sweep_id: str
    number: int


class TrainSpec(_Strict):
    """A training request after validation: parameters complete, task decided."""

    model_name: str
    family: str
    params: dict[str, Any]
    task: Task
    dataset: RunDataset
    training: TrainingConfig
    resources: Resources = Field(default_factory=Resources)
    # Set on a sweep's trials: an ordinary job otherwise.
    trial: TrialRef | None = None


# Bytes per element of the dtypes a typed tensor may carry.
TENSOR_DTYPES = {"float16": 2, "float32": 4, "float64": 8}
# The validation context of a message whose reader decodes every tensor's bytes itself,
# and checks them as it does (a prediction worker: ``workers.tensors.decode``): a
# tensor's size is then checked from the length of its base64, so that its bytes are
# decoded once, not twice.
_BYTES_READ_LATER = "tensor_bytes_read_later"
BYTES_READ_LATER = {_BYTES_READ_LATER: True}


def _base64_size(data: str) -> int:
    """How many bytes standard base64 ``data`` holds, from its length and padding."""
    if len(data) % 4:
        raise ValueError("data is not standard base64")
    return len(data) // 4 * 3 - data.endswith("=") - data.endswith("==")


# The most values one typed tensor may hold: as many as the largest [rows, features].
MAX_TENSOR_VALUES = MAX_PREDICT_ROWS * 10_000


def _tensor_rank(shape: list[int]) -> list[int]:
    if len(shape) == 3:
        raise ValueError("a tensor's shape is [rows, features] or [rows, channels, height, width]")
    if math.prod(shape) > MAX_TENSOR_VALUES:
        raise ValueError(f"a tensor holds at most {MAX_TENSOR_VALUES:,} values")
    return shape


# The one rule for a typed tensor's shape: the wire model below, and
# ``shared.validation.check_tensor_shape`` for a shape that did not come through it.
TensorShape = Annotated[
    list[Annotated[int, Field(ge=1, le=MAX_PREDICT_ROWS)]],
    Field(
        min_length=2,
        max_length=4,
        description="[rows, features]; for image models [rows, channels, height, width]",
    ),
    AfterValidator(_tensor_rank),
]


class Tensor(_Strict):
    """A typed tensor: ``data`` is its elements' little-endian bytes, row after row,
    in standard base64. Much cheaper to send and read than a JSON list of numbers."""

    dtype: Literal["float16", "float32", "float64"]
    shape: TensorShape
    data: str = Field(description="base64 of the little-endian bytes")

    @field_validator("data")
    @classmethod
    def _size(cls, data: str, info: ValidationInfo) -> str:
        if info.context and info.context.get(_BYTES_READ_LATER):
            size = _base64_size(data)
        else:
            try:
                size = len(base64.b64decode(data, validate=True))
            except (binascii.Error, ValueError):
                raise ValueError("data is not standard base64") from None
        dtype, shape = info.data.get("dtype"), info.data.get("shape")
        if dtype is not None and shape is not None:
            need = math.prod(shape) * TENSOR_DTYPES[dtype]
            if size != need:
                raise ValueError(f"data holds {size} bytes; shape {shape} of {dtype} takes {need}")
        return data

    @property
    def rows(self) -> int:
        return self.shape[0]


def _inputs_kind(value: Any) -> str:
    return "as tensor" if isinstance(value, dict | Tensor) else "as list"


# Tags with a space: ``api.errors.field_name`` leaves them out of the field it names.
PredictInputs = Annotated[
    Annotated[Annotated[Inputs, Field(min_length=1, max_length=MAX_PREDICT_ROWS)], Tag("as list")]
    | Annotated[Tensor, Tag("as tensor")],
    Discriminator(_inputs_kind),
    Field(
        description="a list of rows (texts, lists of numbers, or for image models nested "
        "lists [channels][height][width]), or for numeric and image models a typed tensor "
        "{dtype, shape, data}"
    ),
]
OutputFormat = Annotated[
    Literal["json", "tensor"],
    Field(
        description="json: one object per row; tensor: the probabilities (or values) as "
        "one float32 tensor"
    ),
]


def input_rows(inputs: list[Any] | Tensor) -> int:
    return inputs.rows if isinstance(inputs, Tensor) else len(inputs)


class PredictDataset(DatasetRef):
    """A batch prediction's inputs: a stored data set, scored in chunks into a Parquet
    output (``GET /v1/jobs/{id}/output``), its rows in the data set's order."""

    features: list[ColumnName] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="the input columns (default: the columns the model was trained on)",
    )
    text: ColumnName | None = Field(
        None,
        description="for a text model: the column of texts (default: the one it was trained on)",
    )
    id: ColumnName | None = Field(
        None, description="a column copied into the output beside each row's prediction"
    )


class RunPredictDataset(PredictDataset):
    """A ``PredictDataset`` as the worker runs it: version resolved, its file found."""

    file: DatasetFile


class PredictRequest(_Strict):
    """Inline ``inputs`` (answered in the job's result), or a stored ``dataset`` (scored
    into a Parquet output): exactly one."""

    model_name: ModelName
    version: ModelVersionRef = Field(
        "latest", description="a number, latest, or an alias (resolved when it is submitted)"
    )
    inputs: PredictInputs | None = None
    dataset: PredictDataset | None = None
    outputs: OutputFormat = "json"
    wait: float | None = Field(
        None, ge=0, le=3600, description="seconds to wait for the result before answering 202"
    )
    resources: PredictResources = Field(default_factory=PredictResources)
    priority: Priority = 0
    max_attempts: MaxAttempts = 3
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="where to POST the job's end (a webhook for this job alone, signed with "
        "the secret in the answer's callback)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PredictRequest:
        if (self.inputs is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'inputs' or 'dataset'")
        return self


class PredictSpec(_Strict):
    model_name: str
    version: int
    inputs: PredictInputs | None = None
    dataset: RunPredictDataset | None = None
    outputs: OutputFormat = "json"


class ServeRequest(_Strict):
    """A sync prediction: ``POST /v1/models/{name}/predict``."""

    inputs: PredictInputs
    outputs: OutputFormat = "json"
    timeout: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="seconds to wait for the outputs before answering 202 with the job "
        "(default TORCHQUEUE_PREDICT_TIMEOUT_SECONDS, 10)",
    )
    pool: PoolName = DEFAULT_POOL


# --- sync predictions, between the API and the prediction workers -------------------


class ServeItem(_Strict):
    """One request of a batch of sync predictions: its job id, its inputs and output
    format as the caller sent them (``ServeRequest``'s, and ``PredictSpec``'s, types), the
    key that sent it and when the API received it."""

    id: str
    inputs: PredictInputs
    outputs: OutputFormat
    by: str | None
    at: datetime


class ServeBatch(_Strict):
    """What a serve message carries: a model, the version asked for (a number, or
    ``latest`` or an alias, which the worker resolves when it runs the batch), the queue it
    was sent to, the reply channel of the API process that waits, and its requests."""

    model: ModelName
    version: ModelVersionRef
    queue: str
    reply: str
    items: list[ServeItem] = Field(min_length=1)


class PredictionOut(BaseModel):
    """The outputs of a sync prediction; the job that records it has the same id."""

    job_id: str
    model_name: str
    model_version: int
    outputs: list[dict[str, Any]] | Tensor
    classes: list[Label] | None = Field(
        None, description="with tensor outputs of a classifier: the class of each column"
    )


class BatchingIn(_Strict):
    """A model's own batching settings; null falls back to the global default."""

    max_batch_size: int | None = Field(None, ge=1, le=100_000, description="rows per batch")
    max_wait_ms: float | None = Field(None, ge=0, le=10_000)


# --- answers -------------------------------------------------------------------------


class JobOut(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    model_name: str
    model_version: int | None
    queue: str
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    max_attempts: int
    priority: int
    usage: dict[str, Any] | None
    worker: str | None
    message: str | None
    submitted_by: str | None
    cancelled_by: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    spec: dict[str, Any]
    # In the answer that made a job with a callback_url only: its webhook and the secret
    # its deliveries are signed with.
    callback: dict[str, str] | None = None


class JobEventOut(BaseModel):
    at: datetime
    kind: JobEventKind
    message: str
    worker: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class ModelVersionOut(BaseModel):
    model_name: str
    version: int
    family: str
    params: dict[str, Any]
    input_schema: dict[str, Any]
    metrics: dict[str, Any]
    artifact_uri: str
    sha256: str
    job_id: str
    usage: dict[str, Any] | None
    dataset: dict[str, Any] | None = Field(
        None, description="lineage: the data set version it was trained on {name, version, sha256}"
    )
    created_at: datetime


class ModelOut(BaseModel):
    name: str
    created_at: datetime
    updated_at: datetime
    latest_version: int | None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    aliases: dict[str, int] = Field(
        default_factory=dict, description="each alias and the version it points at"
    )
    versions: list[ModelVersionOut] | None = None


class ModelPage(BaseModel):
    items: list[ModelOut]
    total: int
    limit: int
    offset: int


class AliasIn(_Strict):
    """Where an alias is to point: a version number, or latest or another alias, resolved
    once, now (the alias keeps the number)."""

    version: ModelVersionRef = Field(examples=[1])


class AliasOut(BaseModel):
    """An alias as it now is: the version it points at, since when, set by which key."""

    model_name: str
    alias: str
    version: int
    updated_at: datetime
    updated_by: str


class AliasEventOut(BaseModel):
    """One move of an alias: ``from_version`` null for a new alias, ``to_version`` null
    for a removal; who did it (the API key's id and name) and when."""

    id: int
    model_name: str
    alias: str
    from_version: int | None
    to_version: int | None
    by_key: str
    by_name: str
    at: datetime


class AliasHistoryPage(BaseModel):
    """A model's alias history, newest first."""

    items: list[AliasEventOut]
    total: int
    limit: int
    offset: int


class DatasetVersionOut(BaseModel):
    """A data set version: where its bytes are, what they hash to, what they hold.
    ``rows``, ``columns`` and ``sha256`` of a URL source are known once a worker has
    read it."""

    name: str
    version: int
    source: Literal["upload", "url", "inline"]
    format: str
    uri: str
    sha256: str | None
    bytes: int | None
    rows: int | None
    columns: list[dict[str, Any]] | None
    value_counts: dict[str, dict[str, int]] | None = Field(
        None, description="per column of at most 1000 distinct integers, strings or booleans"
    )
    upload_sha256: str | None = Field(None, description="the sha256 of the file as uploaded")
    created_by: str | None
    created_at: datetime


class DatasetOut(BaseModel):
    name: str
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    latest_version: int | None
    versions: list[DatasetVersionOut] | None = None


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


class WorkerOut(BaseModel):
    name: str
    host: str
    pool: str
    queues: list[str]
    devices: list[dict[str, Any]]
    versions: dict[str, str]
    pid: int
    # The model families it loaded; None for a worker from before they were reported.
    families: list[str] | None = None
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    state: Literal["online", "offline", "stopped"] = "online"
    current_job: str | None = None


class FamilyOut(BaseModel):
    """A family a training job may name, as ``GET /v1/families`` shows it: ``params`` is
    its parameters' JSON Schema, ``defaults`` what a job that names none gets, ``pools``
    the pools whose online workers offer it and for which kinds of job."""

    name: str
    description: str
    input: InputKind
    tasks: list[Task]
    params: dict[str, Any]
    defaults: dict[str, Any]
    package: str
    version: str
    builtin: bool
    pools: dict[str, list[str]]

    @classmethod
    def of(cls, info: FamilyInfo, *, builtin: bool, pools: dict[str, list[str]]) -> FamilyOut:
        props = info.params.get("properties", {})
        return cls(
            name=info.name,
            description=info.description,
            input=info.input_kind,
            tasks=info.tasks,
            params=info.params,
            defaults={k: p["default"] for k, p in props.items() if "default" in p},
            package=info.package,
            version=info.version,
            builtin=builtin,
            pools=pools,
        )


class ErrorOut(BaseModel):
    type: str
    detail: str
    field: str | None = None
