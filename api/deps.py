"""Dependencies of the routes: a database session per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared.db.session import session_scope
from shared.errors import Unavailable


def get_db() -> Iterator[Session]:
    try:
        with session_scope() as session:
            yield session
    except OperationalError as exc:
        raise Unavailable(f"the database cannot be reached: {exc.orig}") from None


SessionDep = Annotated[Session, Depends(get_db)]
