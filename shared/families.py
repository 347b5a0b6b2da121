"""Model families as the API knows them: the torch-free half of each family.

A ``Family`` holds everything about a family that can be decided without torch: its name,
its parameters' pydantic schema, the kind of input it takes, the tasks it can do, how it
decides an "auto" task, how many outputs it needs and how many weights it will have, and
where its torch half (``builder``: the ``nn.Module``, the preprocessing) is imported from.
Families are registered through the entry-point group ``torchqueue.families``, the
built-ins below like any plugin's; a worker loads them (``workers.family_plugins``) and
reports them as ``FamilyInfo``. The API knows a plugin's family only by that report: a
``DescribedFamily``, whose parameters are checked against the JSON Schema it carries
(``shared.param_schema``), while the family's own code runs on the workers alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.errors import InvalidSpec

InputKind = Literal["text", "features", "image"]
Task = Literal["classification", "regression"]
# A row's input shape: (features,) for feature rows, (channels, height, width) for images,
# () for texts.
InputShape = tuple[int, ...]
# (validated params, a row's input shape, outputs) -> the number of weights of the built
# module; raises InvalidSpec for an input the parameters cannot take.
ParamCounter = Callable[[Mapping[str, Any], InputShape, int], int]
# What a family may be called: it becomes part of queue names.
FAMILY_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
# The entry-point group that registers families, and the distribution whose families
# every worker has (it is the worker's own code).
ENTRY_POINT_GROUP = "torchqueue.families"
OWN_PACKAGE = "torchqueue"


class FamilyInfo(BaseModel):
    """A family as a worker reports it and the API shows it: everything but its code.
    ``params`` is the JSON Schema of its parameters, with their defaults and limits."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=FAMILY_NAME_PATTERN)
    description: str = ""
    input_kind: InputKind
    tasks: list[Task] = Field(min_length=1)
    params: dict[str, Any]
    binary_as_one_logit: bool = False
    # The distribution that registered it, and its version.
    package: str = OWN_PACKAGE
    version: str = ""


class _TaskRules:
    """What a family decides from its tasks alone, whether its code is here or not."""

    name: str
    tasks: tuple[Task, ...]
    binary_as_one_logit: bool

    def decide_task(self, params: Mapping[str, Any], labels: Sequence[object]) -> Task:
        """The task the parameters ask for; for "auto" (or a family without a ``task``
        parameter), regression when a label is fractional, else classification."""
        asked = params.get("task", "auto")
        if asked != "auto":
            return cast(Task, asked)
        fractional = any(isinstance(y, float) and not y.is_integer() for y in labels)
        return "regression" if fractional else "classification"

    def check_task(self, task: Task, field: str) -> None:
        """Refuse a task the family cannot do, naming the ``field`` that asked for it."""
        if task not in self.tasks:
            does = " or ".join(self.tasks)
            raise InvalidSpec(f"{self.name} does {does} only, not {task}", field=field)

    def n_outputs(self, task: Task, n_classes: int) -> int:
        """The width of the model's last layer for ``task`` over ``n_classes`` classes."""
        if task == "regression" or (n_classes == 2 and self.binary_as_one_logit):
            return 1
        return n_classes


@dataclass(frozen=True)
class Family(_TaskRules):
    """One model family's torch-free code. ``binary_as_one_logit``: two classes are one
    logit under a sigmoid (BCE) rather than two under a softmax (CE). ``builder``:
    ``module:attribute`` of its torch half, imported only where a model is trained or
    served."""

    name: str
    description: str
    input_kind: InputKind
    params: type[BaseModel]
    tasks: tuple[Task, ...]
    count_parameters: ParamCounter
    builder: str
    binary_as_one_logit: bool = False

    def parameter_count(self, params: Mapping[str, Any], shape: InputShape, n_outputs: int) -> int:
        """How many weights the model will have for rows of ``shape``, computed without
        building it (checked against TORCHQUEUE_MAX_MODEL_PARAMS)."""
        return self.count_parameters(params, shape, n_outputs)

    def describe(self, package: str = OWN_PACKAGE, version: str = "") -> FamilyInfo:
        """What a worker reports of the family, and the API knows of it: no code."""
        return FamilyInfo(
            name=self.name,
            description=self.description,
            input_kind=self.input_kind,
            tasks=list(self.tasks),
            params=self.params.model_json_schema(),
            binary_as_one_logit=self.binary_as_one_logit,
            package=package,
            version=version,
        )


@dataclass(frozen=True)
class DescribedFamily(_TaskRules):
    """A family known by what workers reported of it (``FamilyInfo``), not by its code:
    its parameters are checked against their JSON Schema, its size on the worker."""

    info: FamilyInfo

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.info.name

    @property
    def tasks(self) -> tuple[Task, ...]:  # type: ignore[override]
        return tuple(self.info.tasks)

    @property
    def binary_as_one_logit(self) -> bool:  # type: ignore[override]
        return self.info.binary_as_one_logit

    @property
    def input_kind(self) -> InputKind:
        return self.info.input_kind


AnyFamily = Family | DescribedFamily


class TextLSTMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_words: int = Field(1000, ge=2, le=200_000, description="vocabulary cap")
    max_len: int = Field(100, ge=1, le=5000, description="tokens kept per text")
    embedding_dim: int = Field(16, ge=1, le=1024)
    hidden_size: int = Field(32, ge=1, le=2048)


def _text_lstm_count(params: Mapping[str, Any], shape: InputShape, n_outputs: int) -> int:
    """Embedding (at most ``num_words`` rows), one LSTM layer, the linear head."""
    vocab, emb = int(params["num_words"]), int(params["embedding_dim"])
    hidden = int(params["hidden_size"])
    lstm = 4 * (emb * hidden + hidden * hidden + 2 * hidden)
    return vocab * emb + lstm + hidden * n_outputs + n_outputs


class TextTransformerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_words: int = Field(1000, ge=2, le=200_000, description="vocabulary cap")
    max_len: int = Field(64, ge=1, le=4096, description="tokens kept per text")
    layers: int = Field(2, ge=1, le=24, description="encoder layers")
    heads: int = Field(4, ge=1, le=64, description="attention heads per layer")
    width: int = Field(64, ge=1, le=4096, description="d_model: a multiple of heads")
    feedforward: int = Field(128, ge=1, le=16_384, description="feed-forward width")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @field_validator("width")
    @classmethod
    def _heads_divide_width(cls, width: int, info: ValidationInfo) -> int:
        # Declared after ``heads``: it is in ``info.data`` when it was valid itself.
        heads = info.data.get("heads")
        if heads and width % heads:
            raise PydanticCustomError(
                "width_heads",
                "width {width} is not a multiple of heads {heads}: each head takes "
                "width / heads of it",
                {"width": width, "heads": heads},
            )
        return width


def _text_transformer_count(params: Mapping[str, Any], shape: InputShape, n_outputs: int) -> int:
    """Token (at most ``num_words`` rows) and position embeddings; per encoder layer the
    attention's input and output projections, the feed-forward pair and two layer norms;
    the final layer norm and the linear head."""
    vocab, width = int(params["num_words"]), int(params["width"])
    ff, layers = int(params["feedforward"]), int(params["layers"])
    attention = 3 * width * width + 3 * width + width * width + width
    feedforward = width * ff + ff + ff * width + width
    layer = attention + feedforward + 2 * (2 * width)
    embeddings = vocab * width + int(params["max_len"]) * width
    return embeddings + layers * layer + 2 * width + width * n_outputs + n_outputs


class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_sizes: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default=[64, 64], max_length=16
    )
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="auto: regression for fractional targets, else classification"
    )


def _mlp_count(params: Mapping[str, Any], shape: InputShape, n_outputs: int) -> int:
    """A weight matrix and a bias per linear layer."""
    widths = [math.prod(shape), *(int(w) for w in params["hidden_sizes"]), n_outputs]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


class ImageCNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    blocks: int = Field(
        2, ge=1, le=8, description="convolution blocks; each halves the height and width"
    )
    width: int = Field(
        32, ge=1, le=1024, description="the first block's channels; each next block doubles them"
    )
    kernel_size: int = Field(3, ge=1, le=11, description="odd: padded to keep the image size")
    pooling: Literal["max", "avg"] = "max"
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="before the last linear layer")
    hidden_size: int = Field(
        128, ge=0, le=8192, description="the head's hidden layer; 0: none, one linear layer"
    )

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError("the kernel size must be odd (1, 3, 5, ...)")
        return k


MAX_CHANNELS = 1024


def image_cnn_widths(params: Mapping[str, Any]) -> list[int]:
    """Each block's output channels: ``width``, doubled block after block (capped)."""
    return [min(int(params["width"]) << b, MAX_CHANNELS) for b in range(int(params["blocks"]))]


def image_cnn_pooled(params: Mapping[str, Any], shape: InputShape) -> tuple[int, int]:
    """The height and width left after every block's 2×2 pooling; InvalidSpec naming
    ``params.blocks`` when the images are too small for that many blocks."""
    blocks = int(params["blocks"])
    _, height, width = shape
    if min(height, width) >> blocks < 1:
        fits = max(min(height, width).bit_length() - 1, 0)
        raise InvalidSpec(
            f"{blocks} blocks halve the height and width {blocks} times, which images of "
            f"{height}×{width} cannot take: at most {fits} blocks for them",
            field="params.blocks",
        )
    return height >> blocks, width >> blocks


def _image_cnn_count(params: Mapping[str, Any], shape: InputShape, n_outputs: int) -> int:
    """A kernel and a bias per convolution, then the head over the pooled map."""
    if len(shape) != 3:
        return 0  # not known yet (a data set no worker has read): checked when it is
    k = int(params["kernel_size"])
    widths = [shape[0], *image_cnn_widths(params)]
    convs = sum(a * b * k * k + b for a, b in itertools.pairwise(widths))
    height, width = image_cnn_pooled(params, shape)
    hidden = int(params["hidden_size"])
    head = [widths[-1] * height * width, *([hidden] if hidden else []), n_outputs]
    return convs + sum(a * b + b for a, b in itertools.pairwise(head))


TEXT_LSTM = Family(
    name="text_lstm",
    description="text classification: tokenizer, Embedding, LSTM, Linear",
    input_kind="text",
    params=TextLSTMParams,
    tasks=("classification",),
    builder="workers.families.text_lstm:TextLSTMFamily",
    count_parameters=_text_lstm_count,
    binary_as_one_logit=True,
)

TEXT_TRANSFORMER = Family(
    name="text_transformer",
    description="text classification: tokenizer, token and position embeddings, "
    "Transformer encoder, mean pooling, Linear",
    input_kind="text",
    params=TextTransformerParams,
    tasks=("classification",),
    builder="workers.families.text_transformer:TextTransformerFamily",
    count_parameters=_text_transformer_count,
    binary_as_one_logit=True,
)

MLP = Family(
    name="mlp",
    description="tabular classification or regression: a multilayer perceptron",
    input_kind="features",
    params=MLPParams,
    tasks=("classification", "regression"),
    builder="workers.families.mlp:MLPFamily",
    count_parameters=_mlp_count,
)

IMAGE_CNN = Family(
    name="image_cnn",
    description="image classification: convolution, activation and pooling blocks, "
    "then a linear head; inputs [channels, height, width]",
    input_kind="image",
    params=ImageCNNParams,
    tasks=("classification",),
    builder="workers.families.image_cnn:ImageCNNFamily",
    count_parameters=_image_cnn_count,
)

# The built-in families, registered under these names in torchqueue's own entry points.
FAMILIES: dict[str, Family] = {f.name: f for f in (TEXT_LSTM, TEXT_TRANSFORMER, MLP, IMAGE_CNN)}
