"""Dependencies of the routes: a database session per request.

The one rule for commits: a route's writes are committed before its answer is sent. The
session's dependency has the function's scope, so its exit (the commit) runs when the
route function returns and before the response starts; a commit that fails becomes a
503 from the one exception handler, on a connection that stays usable. With the
request's scope (FastAPI's default) the commit would run after the client already had
its 200.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from shared.db.session import session_scope


def get_db() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db, scope="function")]
