"""Model aliases: the one module that writes them and their history. An alias
(``production``, ``staging``, ``best``, …) names one version of one model; ``point`` sets
or moves it, ``remove`` deletes it, and each records who did it (the API key's id and
name), when, and from which version to which (None for a new alias, and for a removal)
as a ``ModelAliasEvent`` in the same transaction. The API's routes and the sweeps call
these; reading an alias (to serve it) is ``model_registry``'s.

An alias is resolved where a version number would be read, on every request (the
workers read it once per batch, never cache it): a moved alias serves the next request.
Writes to one model's aliases take turns on the model's row (``SELECT … FOR UPDATE``;
SQLite's write lock does the same), so each event's ``from_version`` is the version that
was replaced. Functions take a session (``session_scope`` commits) and return pydantic
objects, never ORM rows."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.errors import InvalidSpec, NotFound
from shared.jobstate import now
from shared.schemas import ALIAS_PATTERN, AliasEventOut, AliasHistoryPage, AliasOut

from . import model_registry
from .models import ModelAlias, ModelAliasEvent, RegisteredModel

_ALIAS = re.compile(ALIAS_PATTERN)


def check_alias(alias: str) -> str:
    """The alias, if it is a name an alias may have; else 422 naming ``alias``."""
    if alias == "latest":
        raise InvalidSpec("'latest' is always the newest version; it cannot be an alias",
                          field="alias")  # fmt: skip
    if not _ALIAS.match(alias):
        raise InvalidSpec(
            f"an alias is a lowercase letter, then lowercase letters, digits, '_' or '-' "
            f"(at most 32 in all), not {alias[:40]!r}",
            field="alias",
        )
    return alias


def _alias_out(row: ModelAlias) -> AliasOut:
    return AliasOut.model_validate(row, from_attributes=True)


def _event_out(row: ModelAliasEvent) -> AliasEventOut:
    return AliasEventOut.model_validate(row, from_attributes=True)


def _lock(session: Session, model_name: str) -> None:
    """Take the model's row (404 for an unknown model): its aliases are this
    transaction's to read and write until it ends."""
    found = session.execute(
        sa.select(RegisteredModel.name).where(RegisteredModel.name == model_name).with_for_update()
    ).first()
    if found is None:
        model_registry.get_model(session, model_name, with_versions=False)  # its 404


def _current(session: Session, model_name: str, alias: str) -> ModelAlias | None:
    return session.scalars(
        sa.select(ModelAlias).where(ModelAlias.model_name == model_name, ModelAlias.alias == alias)
    ).first()


def _record(
    session: Session, model_name: str, alias: str, moved: tuple[int | None, int | None],
    by: tuple[str, str],
) -> ModelAliasEvent:  # fmt: skip
    event = ModelAliasEvent(
        model_name=model_name, alias=alias, from_version=moved[0], to_version=moved[1],
        by_key=by[0], by_name=by[1], at=now(),
    )  # fmt: skip
    session.add(event)
    return event


def point(
    session: Session, model_name: str, alias: str, version: int | str, by_key: str, by_name: str
) -> AliasOut:
    """Point ``alias`` at ``version`` of ``model_name`` (a number, or ``latest`` or another
    alias, resolved now: the alias keeps the number). 404 naming ``model_name`` for an
    unknown model, ``version`` for a version it does not have; 422 naming ``alias`` for
    a name an alias may not have. Pointing it where it points already changes nothing
    and records nothing."""
    check_alias(alias)
    _lock(session, model_name)
    target = model_registry.get_model_version(session, model_name, version).version
    row = _current(session, model_name, alias)
    if row is not None and row.version == target:
        return _alias_out(row)
    before = row.version if row is not None else None
    event = _record(session, model_name, alias, (before, target), (by_key, by_name))
    if row is None:
        row = ModelAlias(model_name=model_name, alias=alias, version=target,
                         updated_at=event.at, updated_by=by_key)  # fmt: skip
        session.add(row)
    else:
        row.version, row.updated_at, row.updated_by = target, event.at, by_key
    session.flush()
    return _alias_out(row)


def remove(
    session: Session, model_name: str, alias: str, by_key: str, by_name: str
) -> AliasEventOut:
    """Remove ``alias`` of ``model_name``; the event that records it. 404 naming
    ``model_name`` for an unknown model, ``alias`` for an alias it does not have."""
    check_alias(alias)
    _lock(session, model_name)
    row = _current(session, model_name, alias)
    if row is None:
        raise NotFound(f"model '{model_name}' has no alias '{alias}'", field="alias")
    event = _record(session, model_name, alias, (row.version, None), (by_key, by_name))
    session.delete(row)
    session.flush()
    return _event_out(event)


def history(
    session: Session,
    model_name: str,
    *,
    alias: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> AliasHistoryPage:
    """Every move and removal of a model's aliases (of one ``alias``, if given), newest
    first. 404 naming ``model_name`` for an unknown model."""
    model_registry.get_model(session, model_name, with_versions=False)
    where = [ModelAliasEvent.model_name == model_name]
    if alias is not None:
        where.append(ModelAliasEvent.alias == alias)
    total = session.scalar(sa.select(sa.func.count()).select_from(ModelAliasEvent).where(*where))
    rows = session.scalars(
        sa.select(ModelAliasEvent)
        .where(*where)
        .order_by(ModelAliasEvent.id.desc())
        .limit(limit)
        .offset(offset)
    )
    items = [_event_out(r) for r in rows]
    return AliasHistoryPage(items=items, total=total or 0, limit=limit, offset=offset)
