"""The built-in data sets, by name. They ship with the workers (scikit-learn's bundled sets
and ``workers/datasets/sentiment.tsv``): nothing is downloaded when a job runs."""

from __future__ import annotations

from dataclasses import dataclass

from shared.families import InputKind, Task


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    input_kind: InputKind
    task: Task
    description: str


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset("iris", "features", "classification", "150 flowers, 4 features, 3 species"),
        BuiltinDataset("wine", "features", "classification", "178 wines, 13 features, 3 kinds"),
        BuiltinDataset(
            "breast_cancer", "features", "classification", "569 tumours, 30 features, 2 classes"
        ),
        BuiltinDataset("digits", "features", "classification", "1797 8x8 digits, 10 classes"),
        BuiltinDataset("diabetes", "features", "regression", "442 patients, 10 features"),
        BuiltinDataset(
            "sentiment", "text", "classification", "bilingual (Chinese, English) sentiment"
        ),
    )
}
