"""``text_transformer``: the tokenizer of ``text_lstm`` → token and position embeddings →
a Transformer encoder → the mean over the text's tokens → Linear; one logit for two
classes (its family's ``binary_as_one_logit``), one per class for more."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shared.families import FAMILIES
from workers.families.text_lstm import Tokenized
from workers.preprocess import PAD, Tokenizer


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, given to the encoder as a function of ours rather than as "gelu": PyTorch then
    answers through the same layers as it trains (attention by ``scaled_dot_product_attention``)
    instead of its fused inference path, whose masked softmax alone takes longer on a CPU
    than the whole forward pass the other way (about 1.5 times the time in all, measured
    for one text and for 256 of up to 100 tokens)."""
    return nn.functional.gelu(x)


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
            activation=_gelu,
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
        # The tokenizer pads at the front, so a text's last token is in the last column.
        # That column is always kept: a text with no token at all (every column padding)
        # then attends to, and pools, one padding token rather than to nothing (NaN).
        keep = ids != PAD
        keep[:, -1] = True
        padding: torch.Tensor | None = ~keep
        if ids.device.type == "cpu":
            ids, keep, padding = _trim(ids, keep)
        # Positions count from the text's first token, however much padding precedes it.
        positions = (keep.cumsum(dim=1) - 1).clamp(min=0)
        x = self.embedding(ids) + self.position(positions)
        h = self.encoder(x, src_key_padding_mask=padding)
        # The mean over the kept tokens, in float32 whatever autocast made of ``h``.
        weights = keep.unsqueeze(-1).to(torch.float32)
        pooled = (h.float() * weights).sum(dim=1) / weights.sum(dim=1)
        return self.head(self.dropout(pooled))


def _trim(
    ids: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``ids`` and ``keep`` without the leading columns that no row keeps, and the padding
    mask left (None where every row is whole, as one text always is). The answers are
    the same (masked keys, positions from the first token), and on a CPU the arithmetic
    over padding, and masking, are most of the time for short texts; a GPU would have to
    wait for the answer to ``where``, so it computes the padding instead."""
    first = int(keep.any(dim=0).to(torch.uint8).argmax())  # the first column in use
    ids, keep = ids[:, first:], keep[:, first:]
    return ids, keep, None if bool(keep.all()) else ~keep


class TextTransformerFamily(Tokenized):
    name = "text_transformer"
    family = FAMILIES[name]

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
