"""The error tree in ``shared.errors``' docstring is the hierarchy: every class is drawn
under its parent, with its status (over HTTP) and its ``type``, so a new kind of error
(a new way for a job to fail, say) cannot be added without being documented."""

from __future__ import annotations

import re

import pytest

from shared import errors
from shared.errors import JobError, TorchqueueError

# "    ├── BadData                      bad_data: the data set cannot be used"
_LINE = re.compile(r"^(?P<branch>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<rest>.*)$")


def _drawn() -> dict[str, tuple[int, str | None, str]]:
    """Each class drawn in the tree: its depth, its parent's name and the rest of its line."""
    assert errors.__doc__
    tree: dict[str, tuple[int, str | None, str]] = {}
    parents: list[str] = []
    for line in errors.__doc__.splitlines():
        found = _LINE.match(line)
        if found is None or not line.startswith(("TorchqueueError", " ", "├", "└", "│")):
            continue
        depth = len(found["branch"]) // 4
        parents[depth:] = [found["name"]]
        tree[found["name"]] = (depth, parents[depth - 1] if depth else None, found["rest"])
    return tree


def _every_class() -> list[type[TorchqueueError]]:
    seen: list[type[TorchqueueError]] = []
    todo: list[type[TorchqueueError]] = [TorchqueueError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


@pytest.mark.parametrize("cls", _every_class(), ids=lambda c: c.__name__)
def test_every_error_is_drawn_in_the_tree_with_its_type(cls: type[TorchqueueError]) -> None:
    tree = _drawn()
    assert cls.__name__ in tree, f"{cls.__name__} is not drawn in shared/errors.py's docstring"
    depth, parent, rest = tree[cls.__name__]
    base = cls.__bases__[0]
    assert parent == (None if cls is TorchqueueError else base.__name__)
    assert depth == len([c for c in cls.__mro__ if issubclass(c, TorchqueueError)]) - 1
    if cls is JobError:
        return  # the branch of the ways a job fails, no kind of its own
    if issubclass(cls, JobError):  # on a job, never over HTTP: no status drawn
        assert re.match(rf"{cls.type}:", rest), rest
    else:
        assert re.match(rf"{cls.status}\s+{cls.type}\b", rest), rest


def test_the_tree_draws_no_class_that_is_not_there() -> None:
    assert set(_drawn()) == {c.__name__ for c in _every_class()}


def test_every_error_has_the_one_shape() -> None:
    assert errors.TooLarge("too big").to_dict() == {"type": "too_large", "detail": "too big"}
    named = errors.BadData("not a number", field="dataset.inline.labels[2]")
    assert named.to_dict() == {
        "type": "bad_data",
        "detail": "not a number",
        "field": "dataset.inline.labels[2]",
    }


def test_no_two_kinds_share_a_type() -> None:
    """But two: a job that crashed is the internal_error an API request can be, and a
    job whose family's own code refused its spec on the worker is the invalid_spec that
    the API answers when it can check the same there."""
    types = [c.type for c in _every_class() if c is not JobError]
    shared = sorted(t for t in types if types.count(t) > 1)
    assert shared == ["internal_error", "internal_error", "invalid_spec", "invalid_spec"]
    assert errors.JobCrashed.type == TorchqueueError.type
    assert errors.SpecRefused.type == errors.InvalidSpec.type
