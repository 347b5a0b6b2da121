"""Turning raw inputs and labels into tensors, and back. Every preprocessor's state is
plain JSON, saved in the model's manifest: nothing is pickled."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shared.errors import BadData

PAD, OOV = 0, 1
# CJK ideographs, kana and hangul are written without spaces: one token per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Latin (and other spaced) scripts by words, CJK by characters; lower case."""
    return _TOKEN.findall(text.lower())


class Tokenizer:
    """A vocabulary of the ``num_words`` most frequent tokens (0 pads, 1 is unknown);
    texts become rows of ``max_len`` ids, padded and truncated at the front so that the
    last step of an LSTM sees the end of the text."""

    def __init__(self, num_words: int, max_len: int, vocab: dict[str, int] | None = None):
        self.num_words = num_words
        self.max_len = max_len
        self.vocab = vocab or {}

    def fit(self, texts: Sequence[str]) -> Tokenizer:
        counts = Counter(tok for text in texts for tok in tokenize(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self.vocab = {tok: i + 2 for i, (tok, _) in enumerate(ranked[: self.num_words - 2])}
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 2

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        # Rows filled in a NumPy array: a tensor operation per text costs more than the
        # tokenizing does.
        out = np.full((len(texts), self.max_len), PAD, dtype=np.int64)
        vocab, oov = self.vocab, OOV
        for row, text in enumerate(texts):
            ids = [vocab.get(tok, oov) for tok in tokenize(text)][-self.max_len :]
            if ids:
                out[row, self.max_len - len(ids) :] = ids
        return torch.from_numpy(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "tokenizer",
            "num_words": self.num_words,
            "max_len": self.max_len,
            "vocab": self.vocab,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tokenizer:
        return cls(int(data["num_words"]), int(data["max_len"]), dict(data["vocab"]))


class Standardizer:
    """Per-feature mean and standard deviation, fitted on the training rows."""

    def __init__(self, mean: list[float] | None = None, std: list[float] | None = None):
        self.mean = mean or []
        self.std = std or []

    def fit(self, rows: torch.Tensor) -> Standardizer:
        self.mean = rows.mean(dim=0).tolist()
        std = rows.std(dim=0, unbiased=False)
        self.std = torch.where(std > 1e-12, std, torch.ones_like(std)).tolist()
        return self

    @property
    def n_features(self) -> int:
        return len(self.mean)

    def encode(self, rows: Sequence[Sequence[float]] | torch.Tensor) -> torch.Tensor:
        x = rows if isinstance(rows, torch.Tensor) else feature_tensor(rows)
        mean, std = self._tensors()
        return (x - mean) / std

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as tensors, made once (a model in the cache encodes every call)."""
        made = getattr(self, "_made", None)
        if made is None or made[0] is not self.mean or made[1] is not self.std:
            made = (self.mean, self.std, torch.tensor(self.mean), torch.tensor(self.std))
            self._made = made
        return made[2], made[3]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "standardizer", "mean": self.mean, "std": self.std}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Standardizer:
        return cls(list(data["mean"]), list(data["std"]))


def feature_tensor(rows: Sequence[Any]) -> torch.Tensor:
    try:
        if isinstance(rows, torch.Tensor):
            x = rows.to(torch.float32)
        else:
            x = torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise BadData(f"feature rows must be lists of numbers of one length: {exc}") from None
    if x.ndim != 2:
        raise BadData("feature rows must be lists of numbers of one length")
    if not torch.isfinite(x).all():
        raise BadData("feature rows hold NaN or infinite values")
    return x


class LabelEncoder:
    """Class labels (numbers or strings, as the user gave them) to indices 0..k-1."""

    def __init__(self, classes: list[Any] | None = None):
        self.classes = classes or []

    def fit(self, labels: Sequence[Any]) -> LabelEncoder:
        unique = {(str(y), y) for y in labels}
        self.classes = [y for _, y in sorted(unique, key=_label_order)]
        return self

    def encode(self, labels: Sequence[Any]) -> torch.Tensor:
        index = {str(c): i for i, c in enumerate(self.classes)}
        return torch.tensor([index[str(y)] for y in labels], dtype=torch.long)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "labels", "classes": self.classes}


def _label_order(item: tuple[str, Any]) -> tuple[int, float, str]:
    text, value = item
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return (0, float(value), text)
    return (1, 0.0, text)


class TargetScaler:
    """Regression targets, standardized for training; answers are restored from its JSON
    (``modelio.LoadedModel``)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std

    def fit(self, y: torch.Tensor) -> TargetScaler:
        self.mean = float(y.mean())
        std = float(y.std(unbiased=False))
        self.std = std if std > 1e-12 else 1.0
        return self

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def to_json(self) -> dict[str, Any]:
        return {"kind": "target_scaler", "mean": self.mean, "std": self.std}
