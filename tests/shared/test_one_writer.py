"""One writer per record: ``shared/db/jobs.py`` is the only module that creates, changes
or deletes a job row, ``shared/db/sweeps.py`` the only one for sweeps and their trials.
This reads the source of every other module and fails on a write."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

WRITER = ROOT / "shared" / "db" / "jobs.py"
SWEEPS_WRITER = ROOT / "shared" / "db" / "sweeps.py"
# Records with a state of their own, written by their own writer (not jobs').
SWEEP_RECORDS = ("Sweep", "SweepTrial")
# Where the table is defined, and the migrations that made it.
EXEMPT = {ROOT / "shared" / "db" / "models.py"}
PACKAGES = ("api", "shared", "workers", "ops")


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


_WRITES = ("insert", "update", "delete")


def _call_writes(node: ast.Call, record: str = "Job") -> list[str]:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    found = []
    if name in _WRITES and any(record in _names(arg) for arg in node.args):
        found.append(f"{name}({record})")
    if name in _WRITES and isinstance(func, ast.Attribute) and record in _names(func.value):
        found.append(f"{record} table .{name}()")
    if name == record:
        found.append(f"{record}(...) made")
    if name == "values" and any(k.arg == "state" for k in node.keywords):
        receiver = _names(func.value) if isinstance(func, ast.Attribute) else set()
        # A sweep's or a trial's state, which their own writer writes (checked below).
        if record == "Job" and receiver & set(SWEEP_RECORDS) and "Job" not in receiver:
            return found
        found.append("values(state=...)")
    return found


def _assigned_state(node: ast.AST) -> bool:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    return any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets)


def writes_of_jobs(source: str) -> list[str]:
    """Every place in ``source`` that writes a job: ``insert``/``update``/``delete`` of
    ``Job`` (or of its table), a ``Job(...)`` row made, ``Job.__table__``, an assignment
    to a ``.state`` attribute, or ``state=`` in a ``values(...)`` call."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            found += [f"{where}: {kind}" for kind in _call_writes(node)]
        table = isinstance(node, ast.Attribute) and node.attr == "__table__"
        if table and "Job" in _names(node):
            found.append(f"{where}: Job.__table__")
        if _assigned_state(node):
            found.append(f"{where}: .state assigned")
    return found


def _modules() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and path != WRITER and path not in EXEMPT
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_but_the_writer_writes_a_job(path: Path) -> None:
    assert writes_of_jobs(path.read_text()) == [], path


def test_the_rule_sees_each_kind_of_write() -> None:
    strays = [
        "sa.update(Job).where(Job.id == x).values(message='m')",
        "session.execute(sa.insert(Job), [row])",
        "session.execute(Job.__table__.insert(), rows)",
        "session.add(Job(id='x'))",
        "row.state = JobState.failed",
        "sa.update(Model).values(state='queued')",
        "session.execute(sa.delete(Job))",
    ]
    for stray in strays:
        assert writes_of_jobs(stray), stray
    assert writes_of_jobs("sa.select(Job).where(Job.state == s)") == []
    assert writes_of_jobs("app.state.batcher = Batcher()") == []


def test_the_writer_is_where_the_writes_are() -> None:
    assert len(writes_of_jobs(WRITER.read_text())) >= 5


def writes_of_sweeps(source: str) -> list[str]:
    """Every place in ``source`` that writes a sweep or a trial: ``insert``/``update``/
    ``delete`` of ``Sweep`` or ``SweepTrial``, or a row of either made."""
    return [
        f"line {node.lineno}: {kind}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        for record in SWEEP_RECORDS
        for kind in _call_writes(node, record)
        if "values(state" not in kind
    ]


@pytest.mark.parametrize(
    "path", [p for p in _modules() if p != SWEEPS_WRITER], ids=lambda p: str(p.relative_to(ROOT))
)
def test_no_module_but_the_sweeps_writer_writes_a_sweep_or_a_trial(path: Path) -> None:
    assert writes_of_sweeps(path.read_text()) == [], path


def test_the_sweep_rule_sees_its_writes_and_the_writer_has_them() -> None:
    for stray in ("sa.update(SweepTrial).values(value=1.0)", "session.add(Sweep(id='x'))",
                  "session.execute(sa.delete(Sweep))"):  # fmt: skip
        assert writes_of_sweeps(stray), stray
    assert writes_of_jobs("sa.update(Sweep).where(Sweep.id == x).values(state=s)") == []
    assert len(writes_of_sweeps(SWEEPS_WRITER.read_text())) >= 4
