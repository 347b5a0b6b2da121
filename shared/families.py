"""Model families as the API knows them: the torch-free half of each family.

A ``Family`` holds everything about a family that can be decided without torch: its name,
its parameters' pydantic schema, the kind of input it takes, the tasks it can do, how it
decides an "auto" task, how many outputs it needs and how many weights it will have. The
API validates a request with it before any worker sees the job. The worker's half (the
``nn.Module``, the preprocessing) lives in ``workers/families``, in ``BUILDERS`` under the
same names, and looks its ``Family`` up here by name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.errors import InvalidSpec

InputKind = Literal["text", "features"]
Task = Literal["classification", "regression"]
# (validated params, input width, outputs) -> the number of weights of the built module.
ParamCounter = Callable[[Mapping[str, Any], int, int], int]


@dataclass(frozen=True)
class Family:
    """One model family, torch-free. ``binary_as_one_logit``: two classes are one logit
    under a sigmoid (BCE) rather than two under a softmax (CE)."""

    name: str
    description: str
    input_kind: InputKind
    params: type[BaseModel]
    tasks: tuple[Task, ...]
    count_parameters: ParamCounter
    binary_as_one_logit: bool = False

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

    def parameter_count(self, params: Mapping[str, Any], n_features: int, n_outputs: int) -> int:
        """How many weights the model will have, computed without building it (the API
        checks it against TORCHQUEUE_MAX_MODEL_PARAMS)."""
        return self.count_parameters(params, n_features, n_outputs)


class TextLSTMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_words: int = Field(1000, ge=2, le=200_000, description="vocabulary cap")
    max_len: int = Field(100, ge=1, le=5000, description="tokens kept per text")
    embedding_dim: int = Field(16, ge=1, le=1024)
    hidden_size: int = Field(32, ge=1, le=2048)


def _text_lstm_count(params: Mapping[str, Any], n_features: int, n_outputs: int) -> int:
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


def _text_transformer_count(params: Mapping[str, Any], n_features: int, n_outputs: int) -> int:
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


def _mlp_count(params: Mapping[str, Any], n_features: int, n_outputs: int) -> int:
    """A weight matrix and a bias per linear layer."""
    widths = [n_features, *(int(w) for w in params["hidden_sizes"]), n_outputs]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="text_lstm",
            description="text classification: tokenizer, Embedding, LSTM, Linear",
            input_kind="text",
            params=TextLSTMParams,
            tasks=("classification",),
            count_parameters=_text_lstm_count,
            binary_as_one_logit=True,
        ),
        Family(
            name="text_transformer",
            description="text classification: tokenizer, token and position embeddings, "
            "Transformer encoder, mean pooling, Linear",
            input_kind="text",
            params=TextTransformerParams,
            tasks=("classification",),
            count_parameters=_text_transformer_count,
            binary_as_one_logit=True,
        ),
        Family(
            name="mlp",
            description="tabular classification or regression: a multilayer perceptron",
            input_kind="features",
            params=MLPParams,
            tasks=("classification", "regression"),
            count_parameters=_mlp_count,
        ),
    )
}
