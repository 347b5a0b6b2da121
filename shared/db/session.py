"""Engines and sessions. One engine per URL per process (two for SQLite: one for reads);
SQLite is set up for several processes writing at once (WAL, a busy timeout)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings

# What a database that cannot be reached raises (refused or dropped connections, a server
# restarting, SQLite's lock held too long): a reason to answer 503 or to try again later,
# never a fault of the request. Matched by class, in this one place.
UNREACHABLE: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Transactions are begun by ``_sqlite_begin``, not by the driver.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def get_engine(url: str | None = None) -> sa.Engine:
    return _engine(url or get_settings().db_url)


def _sqlite_begin(conn: sa.Connection) -> None:
    # Take the write lock at the start: a transaction that reads and then writes would
    # otherwise fail at once with "database is locked" when another process wrote between.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_read(conn: sa.Connection) -> None:
    # A snapshot, no lock: in WAL mode readers never wait for the writer.
    conn.exec_driver_sql("BEGIN")


# One engine per URL for the life of the process (a process uses one or two URLs; an
# engine dropped from a bounded cache would leave its pooled connections open).
@cache
def _engine(url: str, reading: bool = False) -> sa.Engine:
    if not url.startswith("sqlite"):
        _OPENED.add((url, False))
        return _engine(url) if reading else sa.create_engine(url, pool_pre_ping=True)
    _OPENED.add((url, reading))
    path = sa.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    sa.event.listen(engine, "begin", _sqlite_begin_read if reading else _sqlite_begin)
    return engine


@cache
def _sessionmaker(url: str, reading: bool = False) -> sessionmaker[Session]:
    return sessionmaker(_engine(url, reading), expire_on_commit=False)


def after_fork() -> None:
    """In a forked child: forget the parent's pooled connections without closing them
    (closing would close the parent's too), so that the child opens its own."""
    for url, reading in list(_OPENED):
        _engine(url, reading).dispose(close=False)


_OPENED: set[tuple[str, bool]] = set()


def dispose_engines() -> None:
    """Close every pooled connection of this process (at the end of a test session)."""
    for url, reading in list(_OPENED):
        _engine(url, reading).dispose()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """The one place that commits or rolls back."""
    session = _sessionmaker(url or get_settings().db_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_scope(url: str | None = None) -> Iterator[Session]:
    """A session that only reads: on SQLite it takes no lock, so it never waits for a
    writer (nor a writer for it). Nothing it changes is committed."""
    session = _sessionmaker(url or get_settings().db_url, reading=True)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
