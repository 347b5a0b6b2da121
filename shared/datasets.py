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
    n_features: int = 0  # feature rows' width; 0 for texts
    n_classes: int = 1  # 1 for a regression


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "iris", "features", "classification", "150 flowers, 4 features, 3 species", 4, 3
        ),
        BuiltinDataset(
            "wine", "features", "classification", "178 wines, 13 features, 3 kinds", 13, 3
        ),
        BuiltinDataset(
            "breast_cancer",
            "features",
            "classification",
            "569 tumours, 30 features, 2 classes",
            30,
            2,
        ),
        BuiltinDataset(
            "digits", "features", "classification", "1797 8x8 digits, 10 classes", 64, 10
        ),
        BuiltinDataset("diabetes", "features", "regression", "442 patients, 10 features", 10, 1),
        BuiltinDataset(
            "sentiment", "text", "classification", "bilingual (Chinese, English) sentiment", 0, 2
        ),
    )
}
