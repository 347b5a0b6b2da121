"""Model families on the worker side: how each turns raw inputs into tensors and which
``nn.Module`` it builds. ``BUILDERS`` holds the torch half of every family this worker
offers, keyed by name, loaded on first use from the families that
``workers.family_plugins`` found (the built-ins among them); each builder holds its
family's torch-free half as ``family``.

A builder may also have ``loss(params, head)``, a loss of its own instead of the head's
(``"ce"``, ``"bce"`` or ``"mse"``), and ``metrics(params, head)``, functions summed over
the rows and recorded as ``val_<name>`` every epoch (``docs/families.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from shared.config import get_settings
from shared.errors import InvalidSpec
from shared.families import Family
from workers import family_plugins

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Preprocessor(Protocol):
    def encode(self, inputs: Sequence[Any]) -> torch.Tensor: ...
    def to_json(self) -> dict[str, Any]: ...


class FamilyBuilder(Protocol):
    name: str
    family: Family

    def fit_preprocessor(self, params: dict[str, Any], inputs: Sequence[Any]) -> Preprocessor: ...
    def load_preprocessor(self, data: dict[str, Any]) -> Preprocessor: ...
    def input_schema(self, pre: Any) -> dict[str, Any]: ...
    def build(self, params: dict[str, Any], pre: Any, n_outputs: int) -> nn.Module: ...


def own_loss(builder: FamilyBuilder, params: dict[str, Any], head: str) -> LossFn | None:
    """The family's own loss for ``head``, if it has one."""
    hook = getattr(builder, "loss", None)
    return hook(params, head) if hook is not None else None


def own_metrics(builder: FamilyBuilder, params: dict[str, Any], head: str) -> dict[str, LossFn]:
    """The family's own validation metrics for ``head``, if it has any."""
    hook = getattr(builder, "metrics", None)
    return dict(hook(params, head) or {}) if hook is not None else {}


class _Builders(Mapping[str, FamilyBuilder]):
    """The torch halves of the families this worker offers, found and imported on first
    use (not at import: what is installed is read when a job needs it)."""

    def __init__(self) -> None:
        self._loaded: dict[str, FamilyBuilder] | None = None

    def _all(self) -> dict[str, FamilyBuilder]:
        if self._loaded is None:
            offered = family_plugins.discover(get_settings().family_plugins)
            loaded: dict[str, FamilyBuilder] = {}
            for name, o in offered.items():
                builder = family_plugins.load_builder(o.family)
                loaded[name] = builder  # type: ignore[assignment]
            self._loaded = loaded
        return self._loaded

    def __getitem__(self, name: str) -> FamilyBuilder:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


BUILDERS = _Builders()


def builder_of(name: str) -> FamilyBuilder:
    """The torch half of family ``name``; InvalidSpec when this worker has none (routing
    sends a job only to workers that have its family: this is a stale message)."""
    found = BUILDERS.get(name)
    if found is None:
        raise InvalidSpec(f"this worker has no model family '{name}'", field="family")
    return found
