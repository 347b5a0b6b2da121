"""Built-in data sets name their classes, and models trained on them answer with the names."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn import datasets as sk

from shared.artifacts import LocalArtifactStore
from shared.datasets import BUILTIN_DATASETS
from shared.schemas import DatasetSpec, TrainRequest
from shared.validation import resolve_train
from workers import data, modelio
from workers.training import train

SKLEARN = {
    "iris": sk.load_iris,
    "wine": sk.load_wine,
    "breast_cancer": sk.load_breast_cancer,
    "digits": sk.load_digits,
}


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_a_builtin_set_names_its_classes_as_scikit_learn_does(name: str) -> None:
    bunch = SKLEARN[name]()
    assert list(BUILTIN_DATASETS[name].classes) == bunch.target_names.tolist()
    raw = data.load(DatasetSpec(builtin=name))
    assert raw.classes == bunch.target_names.tolist()
    assert raw.labels == [bunch.target_names[t].item() for t in bunch.target]


def test_sentiment_says_which_class_is_positive() -> None:
    raw = data.load(DatasetSpec(builtin="sentiment"))
    assert raw.classes == ["negative", "positive"]
    label = dict(zip(raw.inputs, raw.labels, strict=True))
    assert label["A great place for a family dinner."] == "positive"
    assert label["旅馆又小又脏，很不舒服。"] == "negative"


def test_a_regression_set_keeps_its_numbers() -> None:
    raw = data.load(DatasetSpec(builtin="diabetes"))
    assert raw.classes is None and isinstance(raw.labels[0], float)


def test_a_model_of_a_builtin_set_answers_with_class_names(tmp_path: Path) -> None:
    body = {
        "model_name": "iris",
        "family": "mlp",
        "dataset": {"builtin": "iris"},
        "training": {"epochs": 30, "learning_rate": 0.01},
    }
    trained = train(resolve_train(TrainRequest.model_validate(body)))
    store = LocalArtifactStore(tmp_path)
    saved = modelio.save(trained, store, "models/iris/job")
    model = modelio.load(store, saved.uri, saved.sha256)
    assert model.classes == ["setosa", "versicolor", "virginica"]
    setosa, virginica = model.predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert setosa["label"] == "setosa" and virginica["label"] == "virginica"
    assert list(setosa["probabilities"]) == ["setosa", "versicolor", "virginica"]
