"""``text_lstm``: tokenizer → Embedding → LSTM → Linear; one logit for two classes (its
family's ``binary_as_one_logit``), one per class for more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from shared.families import FAMILIES
from workers.preprocess import PAD, Tokenizer


class TextLSTM(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, n_outputs: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, n_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embedding(ids))
        return self.head(hidden[-1])


class Tokenized:
    """What the text families share: a tokenizer of ``num_words`` and ``max_len`` fit on
    the training texts, and texts as their input."""

    def fit_preprocessor(self, params: dict[str, Any], inputs: Sequence[Any]) -> Tokenizer:
        return Tokenizer(params["num_words"], params["max_len"]).fit(inputs)

    def load_preprocessor(self, data: dict[str, Any]) -> Tokenizer:
        return Tokenizer.from_json(data)

    def input_schema(self, pre: Tokenizer) -> dict[str, Any]:
        return {"kind": "text"}


class TextLSTMFamily(Tokenized):
    name = "text_lstm"
    family = FAMILIES[name]

    def build(self, params: dict[str, Any], pre: Tokenizer, n_outputs: int) -> nn.Module:
        return TextLSTM(pre.vocab_size, params["embedding_dim"], params["hidden_size"], n_outputs)
