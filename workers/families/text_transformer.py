"""``text_transformer``: the tokenizer of ``text_lstm`` → token and position embeddings →
a Transformer encoder → the mean over the text's tokens → Linear; one logit for two
classes (its family's ``binary_as_one_logit``), one per class for more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shared.families import FAMILIES
from workers.preprocess import PAD, Tokenizer


class TextTransformer(nn.Module):
    """Pre-norm encoder layers (``norm_first``, with a final layer norm): they train
    without a warm-up of the learning rate, which post-norm layers need."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        layers: int,
        heads: int,
        width: int,
        feedforward: int,
        dropout: float,
        n_outputs: int,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.position = nn.Embedding(max_len, width)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            feedforward,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # No nested tensors: they need post-norm layers, and would warn at every build.
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.device.type == "cpu":
            ids = _trim(ids)
        # The tokenizer pads at the front, so a text's last token is in the last column.
        # That column is always kept: a text with no token at all (every column padding)
        # then attends to, and pools, one padding token rather than to nothing (NaN).
        keep = ids != PAD
        keep[:, -1] = True
        # Positions count from the text's first token, however much padding precedes it.
        positions = (keep.cumsum(dim=1) - 1).clamp(min=0)
        x = self.embedding(ids) + self.position(positions)
        h = self.encoder(x, src_key_padding_mask=~keep)
        # The mean over the kept tokens, in float32 whatever autocast made of ``h``.
        weights = keep.unsqueeze(-1).to(torch.float32)
        pooled = (h.float() * weights).sum(dim=1) / weights.sum(dim=1)
        return self.head(self.dropout(pooled))


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` without the leading columns that are padding in every row (the last column
    stays). The answers are the same (masked keys and positions from the first token),
    and on a CPU the arithmetic over padding is most of the time for short texts; a GPU
    would have to wait for the answer to ``where``, so it computes the padding instead."""
    used = (ids != PAD).any(dim=0)
    used[-1] = True
    first = int(used.to(torch.uint8).argmax())  # the first column in use
    return ids[:, first:] if first else ids


class TextTransformerFamily:
    name = "text_transformer"
    family = FAMILIES[name]

    def fit_preprocessor(self, params: dict[str, Any], inputs: Sequence[Any]) -> Tokenizer:
        return Tokenizer(params["num_words"], params["max_len"]).fit(inputs)

    def load_preprocessor(self, data: dict[str, Any]) -> Tokenizer:
        return Tokenizer.from_json(data)

    def input_schema(self, pre: Tokenizer) -> dict[str, Any]:
        return {"kind": "text"}

    def build(self, params: dict[str, Any], pre: Tokenizer, n_outputs: int) -> nn.Module:
        return TextTransformer(
            pre.vocab_size,
            pre.max_len,
            layers=params["layers"],
            heads=params["heads"],
            width=params["width"],
            feedforward=params["feedforward"],
            dropout=params["dropout"],
            n_outputs=n_outputs,
        )
