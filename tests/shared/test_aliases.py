"""Model aliases in the database: point, move, remove, the history of each move, the
names refused, resolution wherever a version is named, and a model's deletion taking its
aliases along."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
import sqlalchemy as sa

from shared.db import aliases, jobs, model_registry
from shared.db.models import ModelAlias, ModelAliasEvent, RegisteredModel
from shared.db.session import session_scope
from shared.errors import InvalidSpec, NotFound
from shared.jobstate import JobKind
from tests.helpers import ROOT, unique

ALIAS_ROWS = {"ModelAlias", "ModelAliasEvent"}


def _model(versions: int) -> str:
    """A model with ``versions`` versions (their artifacts are never read here)."""
    name = unique("alias")
    for _ in range(versions):
        with session_scope() as s:
            job = jobs.create_job(s, kind=JobKind.train, model_name=name, spec={}, queue="t")
            model_registry.register_model_version(
                s, model_name=name, family="mlp", params={},
                input_schema={"kind": "features", "n_features": 4}, metrics={},
                artifact_uri="file:///nowhere", sha256="0" * 64, job_id=job.id,
            )  # fmt: skip
    return name


def _moves(name: str) -> list[tuple[str, int | None, int | None, str, str]]:
    with session_scope() as s:
        page = aliases.history(s, name)
    assert page.total == len(page.items)
    return [(e.alias, e.from_version, e.to_version, e.by_key, e.by_name) for e in page.items]


def test_point_move_and_remove_are_each_recorded_with_who_did_it() -> None:
    name = _model(2)
    with session_scope() as s:
        out = aliases.point(s, name, "production", 1, "k1", "alice")
    assert (out.model_name, out.alias, out.version, out.updated_by) == (
        name, "production", 1, "k1",
    )  # fmt: skip
    with session_scope() as s:
        assert model_registry.get_model_version(s, name, "production").version == 1
        assert model_registry.version_number(s, name, "production") == 1
        assert model_registry.get_model(s, name).aliases == {"production": 1}
        assert model_registry.families_of(s, name) == {
            "1": "mlp", "2": "mlp", "latest": "mlp", "production": "mlp",
        }  # fmt: skip
    with session_scope() as s:
        moved = aliases.point(s, name, "production", 2, "k2", "bob")
        assert aliases.point(s, name, "production", 2, "k2", "bob") == moved  # no move
        # Named by another alias, or latest: resolved now, kept as a number.
        assert aliases.point(s, name, "staging", "production", "k2", "bob").version == 2
        assert aliases.point(s, name, "best", "latest", "k2", "bob").version == 2
    with session_scope() as s:
        assert model_registry.get_model(s, name).aliases == {
            "best": 2, "production": 2, "staging": 2,
        }  # fmt: skip
        listed = model_registry.list_models(s, limit=500)
    assert next(m for m in listed.items if m.name == name).aliases["production"] == 2
    with session_scope() as s:
        gone = aliases.remove(s, name, "production", "k1", "alice")
    assert (gone.from_version, gone.to_version, gone.by_key) == (2, None, "k1")
    assert _moves(name) == [  # newest first
        ("production", 2, None, "k1", "alice"),
        ("best", None, 2, "k2", "bob"),
        ("staging", None, 2, "k2", "bob"),
        ("production", 1, 2, "k2", "bob"),
        ("production", None, 1, "k1", "alice"),
    ]
    with session_scope() as s:
        assert [e.alias for e in aliases.history(s, name, alias="staging").items] == ["staging"]
        page = aliases.history(s, name, limit=2, offset=1)
        assert (page.total, [e.alias for e in page.items]) == (5, ["best", "staging"])
        assert model_registry.version_number(s, name, "production") is None
        with pytest.raises(NotFound) as missing:
            model_registry.get_model_version(s, name, "production")
    assert missing.value.field == "version" and "no alias 'production'" in missing.value.detail


def test_what_does_not_exist_is_not_found_naming_its_field() -> None:
    name = _model(1)
    with session_scope() as s:
        with pytest.raises(NotFound) as version:
            aliases.point(s, name, "production", 9, "k", "n")
        assert version.value.field == "version"
        with pytest.raises(NotFound) as by_alias:
            aliases.point(s, name, "production", "staging", "k", "n")
        assert by_alias.value.field == "version"
        with pytest.raises(NotFound) as model:
            aliases.point(s, unique("nope"), "production", 1, "k", "n")
        assert model.value.field == "model_name"
        with pytest.raises(NotFound) as absent:
            aliases.remove(s, name, "production", "k", "n")
        assert absent.value.field == "alias"
        with pytest.raises(NotFound) as history:
            aliases.history(s, unique("nope"))
        assert history.value.field == "model_name"
        assert model_registry.get_model(s, name).aliases == {}
    assert _moves(name) == []


@pytest.mark.parametrize(
    "alias", ["latest", "Production", "1st", "-x", "a" * 33, "", "pro duction", "prod.1", "é"]
)
def test_a_name_an_alias_may_not_have_is_refused_naming_alias(alias: str) -> None:
    name = _model(1)
    with session_scope() as s:
        with pytest.raises(InvalidSpec) as point:
            aliases.point(s, name, alias, 1, "k", "n")
        assert point.value.field == "alias"
        with pytest.raises(InvalidSpec) as remove:
            aliases.remove(s, name, alias, "k", "n")
        assert remove.value.field == "alias"
    assert _moves(name) == []


def test_the_longest_and_shortest_names_are_aliases() -> None:
    name = _model(1)
    with session_scope() as s:
        for alias in ("a" * 32, "b", "p_1-x"):
            assert aliases.point(s, name, alias, 1, "k", "n").alias == alias


def test_racing_moves_each_record_the_version_they_replaced() -> None:
    name = _model(2)

    def move(n: int) -> int:
        with session_scope() as s:
            return aliases.point(s, name, "production", 1 + n % 2, f"k{n}", f"n{n}").version

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(move, range(24)))
    events = list(reversed(_moves(name)))  # oldest first
    assert events[0][1] is None
    for before, after in pairwise(events):
        assert after[1] == before[2] and after[1] != after[2]
    with session_scope() as s:
        assert model_registry.get_model(s, name).aliases == {"production": events[-1][2]}


def test_a_deleted_model_takes_its_aliases_and_their_history_along() -> None:
    name, other = _model(1), _model(1)
    with session_scope() as s:
        for model in (name, other):
            aliases.point(s, model, "production", 1, "k", "n")
    with session_scope() as s:  # no route deletes a model; the schema must still cascade
        s.execute(sa.delete(RegisteredModel).where(RegisteredModel.name == name))
    with session_scope() as s:
        for table in (ModelAlias, ModelAliasEvent):
            left = s.scalars(sa.select(table.model_name).where(table.model_name == name)).all()
            assert left == [], table.__tablename__
        assert model_registry.get_model(s, other).aliases == {"production": 1}


def _writes_of_aliases(source: str) -> list[int]:
    """The lines that make an alias row or insert, update or delete one's table."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        named = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
        if name in ALIAS_ROWS or (name in ("insert", "update", "delete") and named & ALIAS_ROWS):
            lines.append(node.lineno)
    return lines


def test_no_module_but_the_writer_writes_an_alias() -> None:
    writer = ROOT / "shared" / "db" / "aliases.py"
    assert _writes_of_aliases("sa.update(ModelAlias).values(version=2)")
    assert _writes_of_aliases("session.add(ModelAliasEvent(alias='x'))")
    assert len(_writes_of_aliases(writer.read_text())) >= 2
    strays = {
        str(path.relative_to(ROOT)): found
        for package in ("api", "shared", "workers", "ops")
        for path in (ROOT / package).rglob("*.py")
        if path != writer and "migrations" not in path.parts
        if (found := _writes_of_aliases(path.read_text()))
    }
    assert strays == {}
