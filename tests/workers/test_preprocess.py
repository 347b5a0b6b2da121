from __future__ import annotations

import pytest
import torch

from shared.errors import BadData
from workers.preprocess import OOV, PAD, LabelEncoder, Standardizer, Tokenizer, tokenize


def test_cjk_is_split_per_character_and_latin_by_words() -> None:
    assert tokenize("我非常喜欢这个课程。") == [
        "我",
        "非",
        "常",
        "喜",
        "欢",
        "这",
        "个",
        "课",
        "程",
    ]
    assert tokenize("I LOVE this course, really!") == ["i", "love", "this", "course", "really"]
    assert tokenize("PyTorch课程很好") == ["pytorch", "课", "程", "很", "好"]


def test_texts_are_padded_and_truncated_at_the_front() -> None:
    tok = Tokenizer(num_words=100, max_len=4).fit(["a b c", "a b", "a"])
    ids = tok.encode(["a", "a b c d e f", "zzz"])
    assert ids.shape == (3, 4)
    assert ids[0].tolist()[:3] == [PAD, PAD, PAD]
    assert ids[0, 3] == tok.vocab["a"]
    assert ids[1].tolist() == [tok.vocab["c"], OOV, OOV, OOV]  # the last four tokens
    assert ids[2].tolist() == [PAD, PAD, PAD, OOV]


def test_the_vocabulary_keeps_the_most_frequent_words() -> None:
    tok = Tokenizer(num_words=4, max_len=3).fit(["x x x y y z"])
    assert set(tok.vocab) == {"x", "y"}
    assert tok.vocab_size == 4
    again = Tokenizer.from_json(tok.to_json())
    assert torch.equal(again.encode(["x z"]), tok.encode(["x z"]))


def test_standardizer_uses_training_statistics_and_survives_constant_columns() -> None:
    st = Standardizer().fit(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert st.encode([[2.0, 5.0]]).tolist() == [[0.0, 0.0]]
    assert st.encode([[3.0, 7.0]]).tolist() == [[1.0, 2.0]]
    with pytest.raises(BadData):
        st.encode([[1.0], [1.0, 2.0]])


def test_labels_keep_their_values_and_order() -> None:
    enc = LabelEncoder().fit(["pos", "neg", "pos"])
    assert enc.classes == ["neg", "pos"]
    assert enc.encode(["pos", "neg"]).tolist() == [1, 0]
    assert LabelEncoder().fit([10, 2, 2]).classes == [2, 10]
