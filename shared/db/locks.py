"""Named locks with an expiry, held by one process at a time (the reaper's): taken and
renewed with a conditional UPDATE, so an owner that died loses its lock when it expires."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.jobstate import now

from .models import Lock


def acquire_lock(session: Session, name: str, owner: str, ttl_seconds: float) -> bool:
    """Take or renew the lock ``name`` for ``owner`` until ttl from now; False while
    another owner holds an unexpired one."""
    stamp = now()
    expires = stamp + timedelta(seconds=ttl_seconds)
    result = session.execute(
        sa.update(Lock)
        .where(Lock.name == name, sa.or_(Lock.owner == owner, Lock.expires_at < stamp))
        .values(owner=owner, expires_at=expires)
    )
    if getattr(result, "rowcount", 0) == 1:
        return True
    if session.get(Lock, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Lock(name=name, owner=owner, expires_at=expires))
    except IntegrityError:
        return False
    return True


def release_lock(session: Session, name: str, owner: str) -> None:
    session.execute(sa.delete(Lock).where(Lock.name == name, Lock.owner == owner))
