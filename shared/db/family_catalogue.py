"""The model families a job may name: the built-ins, whose torch-free code ships with
every process, and the plugins' families as workers reported them when they started
(the one writer of ``model_families``). The API validates a plugin family's jobs by that
report, never by importing the plugin."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.constants import QUEUE_PREDICT, QUEUE_TRAIN
from shared.families import FAMILIES, AnyFamily, DescribedFamily, FamilyInfo
from shared.jobstate import now
from shared.schemas import FamilyOut, WorkerOut

from .models import ModelFamily


def report(session: Session, worker: str, infos: Iterable[FamilyInfo]) -> None:
    """Record what a starting worker loaded; the last report of a family wins (workers
    that run two versions of one plugin should agree on its parameters)."""
    stamp = now()
    for info in infos:
        row = session.get(ModelFamily, info.name)
        if row is None:
            row = ModelFamily(name=info.name)
            session.add(row)
        row.package, row.version = info.package, info.version
        row.info = info.model_dump(mode="json")
        row.reported_by, row.reported_at = worker, stamp
    session.flush()


def lookup(session: Session, name: str) -> AnyFamily | None:
    """The family called ``name``: a built-in's code, else a worker's report of it."""
    if name in FAMILIES:
        return FAMILIES[name]
    row = session.get(ModelFamily, name)
    return DescribedFamily(FamilyInfo.model_validate(row.info)) if row is not None else None


def names(session: Session) -> list[str]:
    """Every family a job may name."""
    reported = session.scalars(sa.select(ModelFamily.name)).all()
    return sorted({*FAMILIES, *reported})


def _kinds(worker: WorkerOut) -> list[str]:
    return [k for k in (QUEUE_TRAIN, QUEUE_PREDICT) if any(q.startswith(k) for q in worker.queues)]


def offers(worker: WorkerOut, family: str) -> bool:
    """Whether the worker loaded ``family`` (one from before reports has the built-ins)."""
    return family in worker.families if worker.families is not None else family in FAMILIES


def catalogue(session: Session, workers: list[WorkerOut]) -> dict[str, FamilyOut]:
    """Every family, with the pools whose online workers (of ``workers``) offer it."""
    infos = {
        row.name: FamilyInfo.model_validate(row.info)
        for row in session.scalars(sa.select(ModelFamily))
    }
    infos |= {
        name: family.describe(version=infos[name].version if name in infos else "")
        for name, family in FAMILIES.items()
    }
    out = {}
    for name, info in sorted(infos.items()):
        pools: dict[str, list[str]] = {}
        for w in workers:
            if w.state == "online" and offers(w, name):
                kinds = pools.setdefault(w.pool, [])
                kinds += [k for k in _kinds(w) if k not in kinds]
        out[name] = FamilyOut.of(info, builtin=name in FAMILIES, pools=pools)
    return out
