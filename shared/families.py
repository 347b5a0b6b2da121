"""Model families as the API knows them: a name, the kind of input, and a pydantic schema of
the parameters. Torch-free, so the API validates a request before any worker sees it; the
builders that make the ``nn.Module`` live in ``workers/families``, under the same names."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

InputKind = Literal["text", "features"]
Task = Literal["classification", "regression"]


class TextLSTMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_words: int = Field(1000, ge=2, le=200_000, description="vocabulary cap")
    max_len: int = Field(100, ge=1, le=5000, description="tokens kept per text")
    embedding_dim: int = Field(16, ge=1, le=1024)
    hidden_size: int = Field(32, ge=1, le=2048)


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


@dataclass(frozen=True)
class Family:
    name: str
    input_kind: InputKind
    params: type[BaseModel]
    description: str


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "text_lstm",
            "text",
            TextLSTMParams,
            "text classification: tokenizer, Embedding, LSTM, Linear",
        ),
        Family(
            "mlp",
            "features",
            MLPParams,
            "tabular classification or regression: a multilayer perceptron",
        ),
    )
}


def parameter_count(family: str, params: dict[str, Any], n_features: int, n_outputs: int) -> int:
    """How many weights the model will have, computed without building it (the API checks
    it against TORCHQUEUE_MAX_MODEL_PARAMS)."""
    if family == "text_lstm":
        vocab, emb = int(params["num_words"]), int(params["embedding_dim"])
        hidden = int(params["hidden_size"])
        lstm = 4 * (emb * hidden + hidden * hidden + 2 * hidden)
        return vocab * emb + lstm + hidden * n_outputs + n_outputs
    widths = [n_features, *(int(w) for w in params["hidden_sizes"]), n_outputs]
    return sum(a * b + b for a, b in itertools.pairwise(widths))
