"""The built-in data sets, by name. They ship with the workers (scikit-learn's bundled sets
and ``workers/datasets/sentiment.tsv``): nothing is downloaded when a job runs.

A classification set names its classes, in the order of its targets (scikit-learn's
``target_names``; sentiment's 0 and 1): a model trained on it answers with the names."""

from __future__ import annotations

from dataclasses import dataclass

from shared.families import InputKind, Task


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    input_kind: InputKind
    task: Task
    description: str
    n_features: int = 0  # feature rows' width (an image's values); 0 for texts
    classes: tuple[str | int, ...] = ()  # class k's name at k; none for a regression
    image: tuple[int, int, int] | None = None  # an image set's [channels, height, width]

    @property
    def shape(self) -> tuple[int, ...]:
        """A row's input shape (``shared.families.InputShape``)."""
        if self.image is not None:
            return self.image
        return (self.n_features,) if self.n_features else ()

    @property
    def n_classes(self) -> int:
        """1 for a regression."""
        return len(self.classes) or 1


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "iris",
            "features",
            "classification",
            "150 flowers, 4 features, 3 species",
            4,
            ("setosa", "versicolor", "virginica"),
        ),
        BuiltinDataset(
            "wine",
            "features",
            "classification",
            "178 wines, 13 features, 3 cultivars",
            13,
            ("class_0", "class_1", "class_2"),
        ),
        BuiltinDataset(
            "breast_cancer",
            "features",
            "classification",
            "569 tumours, 30 features, 2 classes",
            30,
            ("malignant", "benign"),
        ),
        BuiltinDataset(
            "digits",
            "features",
            "classification",
            "1797 8x8 digits, 10 classes",
            64,
            tuple(range(10)),
        ),
        BuiltinDataset(
            "digits_images",
            "image",
            "classification",
            "the 1797 digits as 1x8x8 images, 10 classes",
            64,
            tuple(range(10)),
            image=(1, 8, 8),
        ),
        BuiltinDataset("diabetes", "features", "regression", "442 patients, 10 features", 10),
        BuiltinDataset(
            "sentiment",
            "text",
            "classification",
            "bilingual (Chinese, English) sentiment",
            0,
            ("negative", "positive"),
        ),
    )
}
