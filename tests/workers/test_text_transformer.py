"""The ``text_transformer`` family: its size as the API computes it, its answers (padding
masked, stable through a save and a load, under bf16 autocast), its accuracy on the
built-in ``sentiment`` set, and a job through HTTP on a stored column of texts."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from shared.artifacts import LocalArtifactStore
from shared.errors import InvalidSpec
from shared.families import FAMILIES
from shared.schemas import TrainRequest, TrainSpec
from shared.validation import resolve_train
from tests.helpers import unique, wait_job
from workers import modelio
from workers.families import BUILDERS
from workers.preprocess import Tokenizer
from workers.training import Trained, train

FAMILY, BUILDER = FAMILIES["text_transformer"], BUILDERS["text_transformer"]
WORDS = [f"w{i}" for i in range(40)]
TEXTS = [" ".join(WORDS[i : i + 1 + i % 7]) for i in range(0, 40, 2)]
SMALL = {"num_words": 30, "max_len": 12, "layers": 2, "heads": 2, "width": 8, "feedforward": 16}


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(params: dict[str, Any], dataset: dict[str, Any], **training: Any) -> TrainSpec:
    body = {
        "model_name": "m",
        "family": "text_transformer",
        "params": params,
        "dataset": dataset,
        "training": training,
    }
    return resolve_train(TrainRequest.model_validate(body))


def _inline(n: int = 60) -> dict[str, Any]:
    """Texts whose class is whether they hold ``w3``, some of them long, one empty."""
    texts = [" ".join(WORDS[(i * 7) % 40 : (i * 7) % 40 + 1 + i % 15]) for i in range(n)]
    texts[5] = ""
    return {"inline": {"inputs": texts, "labels": [int("w3" in t.split()) for t in texts]}}


def _built(params: dict[str, Any], n_outputs: int = 1) -> tuple[Any, torch.nn.Module]:
    """The tokenizer fitted on TEXTS, and the module (in training mode)."""
    full = FAMILY.params.model_validate(params).model_dump()
    pre = BUILDER.fit_preprocessor(full, TEXTS)
    torch.manual_seed(0)
    return pre, BUILDER.build(full, pre, n_outputs)


@pytest.mark.parametrize(
    "params",
    [
        {},
        SMALL,
        {"num_words": 25, "max_len": 7, "layers": 3, "heads": 4, "width": 12, "feedforward": 5},
        {"num_words": 12, "max_len": 1, "layers": 1, "heads": 1, "width": 3, "feedforward": 1},
    ],
)
@pytest.mark.parametrize("n_classes", [2, 5])
def test_the_parameter_count_is_that_of_the_built_module(
    params: dict[str, Any], n_classes: int
) -> None:
    full = FAMILY.params.model_validate(params).model_dump()
    texts = TEXTS if full["num_words"] <= 30 else [f"x{i}" for i in range(full["num_words"])]
    pre = BUILDER.fit_preprocessor(full, texts)
    assert (
        isinstance(pre, Tokenizer) and pre.vocab_size == full["num_words"]
    )  # every embedding row is built
    n_outputs = FAMILY.n_outputs("classification", n_classes)
    module = BUILDER.build(full, pre, n_outputs)
    assert FAMILY.parameter_count(full, (), n_outputs) == sum(
        p.numel() for p in module.parameters()
    )


def test_a_width_that_heads_do_not_divide_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec) as info:
        _spec({"heads": 3, "width": 64}, {"builtin": "sentiment"})
    assert info.value.field == "params.width"
    assert "width 64 is not a multiple of heads 3" in info.value.detail
    # A bad ``heads`` is named itself, not through the width.
    with pytest.raises(InvalidSpec) as info:
        _spec({"heads": 0}, {"builtin": "sentiment"})
    assert info.value.field == "params.heads"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_text_answers_the_same_whatever_the_padding_beside_it(training: bool) -> None:
    # On the CPU, the shorter text's row keeps padding columns, masked (in training mode
    # too: no dropout here); alone, it has none and no mask.
    pre, module = _built(SMALL | {"dropout": 0.0})
    module.train(training)
    short, long = "w1 w2", " ".join(WORDS[:30])
    with torch.inference_mode():
        alone = module(pre.encode([short]))
        beside = module(pre.encode([long, short, ""]))
    assert torch.allclose(beside[1], alone[0], atol=1e-5)
    assert torch.isfinite(beside).all()  # the empty text too


def test_bf16_autocast_trains_and_answers_close_to_float32(one_thread: None) -> None:
    pre, module = _built(SMALL | {"dropout": 0.0}, 3)
    x = pre.encode([*TEXTS, ""])
    with torch.no_grad():
        exact = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    torch.nn.functional.cross_entropy(out.float(), torch.arange(len(x)) % 3).backward()
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), exact, atol=0.1)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def test_the_same_seed_trains_the_same_model(one_thread: None) -> None:
    spec = _spec(SMALL, _inline(), epochs=3, batch_size=8, early_stopping_patience=None)
    a, b = train(spec), train(spec)
    for (name, x), y in zip(
        a.module.state_dict().items(), b.module.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_a_saved_model_loads_and_answers_the_same(tmp_path: Path, one_thread: None) -> None:
    trained: Trained = train(_spec(SMALL, _inline(), epochs=2, batch_size=8))
    store = LocalArtifactStore(tmp_path)
    saved = modelio.save(trained, store, "models/transformer/job")
    assert saved.manifest["family"] == "text_transformer"
    assert saved.manifest["preprocessor"]["kind"] == "tokenizer"
    loaded = modelio.load(store, saved.uri, saved.sha256)
    texts = ["w3 w4 w5", "", " ".join(WORDS), "这是一个新的文本。", "w0"]
    with torch.inference_mode():
        before = trained.module(loaded.pre.encode(texts))
    assert torch.allclose(loaded.forward(loaded.encode(texts)), before, atol=1e-6)
    answers = loaded.predict(texts)
    assert [a["label"] for a in answers] == [int(v > 0) for v in before.squeeze(-1).tolist()]


@pytest.mark.slow
def test_it_learns_the_sentiment_set(one_thread: None) -> None:
    trained = train(_spec({}, {"builtin": "sentiment"}, epochs=4, learning_rate=0.003))
    assert trained.metrics["val_accuracy"] >= 0.85


def _upload_reviews(client: Any) -> str:
    """A stored table with a column of texts (beside one of numbers)."""
    good = ["a good film", "great acting", "我很喜欢", "lovely music"]
    bad = ["a bad film", "awful plot", "我不喜欢", "boring music"]
    texts = [t for pair in zip(good, bad, strict=True) for t in pair] * 15
    labels = ["pos", "neg"] * (len(texts) // 2)
    out = io.BytesIO()
    table = {"id": list(range(len(texts))), "review": texts, "mood": labels}
    pacsv.write_csv(pa.table(table), out)
    name = unique("reviews")
    made = client.post(
        "/v1/datasets",
        params={"name": name},
        content=out.getvalue(),
        headers={"Content-Type": "text/csv"},
    )
    assert made.status_code == 201, made.text
    return name


@pytest.mark.slow
def test_a_job_trains_on_stored_texts_and_predicts_through_http(
    api_client: Any, worker: Path
) -> None:
    listed = api_client.get("/v1/families").json()["text_transformer"]
    assert listed["input"] == "text"
    assert listed["params"]["properties"]["heads"]["default"] == 4

    body = {
        "model_name": unique("transformer"),
        "family": "text_transformer",
        "params": {"width": 30, "heads": 4},
        "dataset": {"name": _upload_reviews(api_client), "label": "mood"},
        "training": {"epochs": 10, "learning_rate": 0.01},
    }
    refused = api_client.post("/v1/jobs/train", json=body)
    assert refused.status_code == 422 and refused.json()["field"] == "params.width"

    body["params"] = {"width": 32, "heads": 4, "layers": 1, "max_len": 16}
    made = api_client.post("/v1/jobs/train", json=body)
    assert made.status_code == 201, made.text
    done = wait_job(api_client, made.json()["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["metrics"]["val_accuracy"] == 1.0

    name = body["model_name"]
    version = api_client.get(f"/v1/models/{name}/versions/latest").json()
    assert version["family"] == "text_transformer" and version["params"]["width"] == 32
    answer = api_client.post(
        f"/v1/models/{name}/predict", json={"inputs": ["a good film", "我不喜欢", ""]}
    )
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert [o["label"] for o in outputs[:2]] == ["pos", "neg"]
    assert sum(outputs[2]["probabilities"].values()) == pytest.approx(1.0)
