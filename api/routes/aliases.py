"""Model aliases: point one (``production``, ``staging``, …) at a version, remove it, and
read the history of its moves. Every route that takes a version takes an alias too."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.auth import require
from api.deps import SessionDep
from shared.auth import Principal
from shared.db import aliases
from shared.schemas import (
    ALIAS_PATTERN,
    MAX_OFFSET,
    AliasHistoryPage,
    AliasIn,
    AliasOut,
    ErrorOut,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 422)
}
router = APIRouter(
    prefix="/v1",
    tags=["models"],
    dependencies=[Depends(require("models:read"))],
    responses=ERRORS,
)
ModelsWrite = Annotated[Principal, Depends(require("models:write"))]
AliasPath = Annotated[
    str, Path(pattern=ALIAS_PATTERN, description="not latest", examples=["production"])
]


@router.put("/models/{name}/aliases/{alias}")
def set_alias(
    name: str,
    alias: AliasPath,
    body: AliasIn,
    session: SessionDep,
    request: Request,
    who: ModelsWrite,
) -> AliasOut:
    """Point ``alias`` at a version (a number, or latest or another alias, resolved now),
    creating or moving it; the next prediction that names it is served by that version.
    Each move is recorded with the caller's key (``GET /v1/models/{name}/alias-history``)."""
    out = aliases.point(session, name, alias, body.version, who.key_id, who.name)
    request.app.state.batcher.forget_limits(name)  # the family of the alias's version
    return out


@router.delete("/models/{name}/aliases/{alias}", status_code=204)
def delete_alias(
    name: str, alias: AliasPath, session: SessionDep, request: Request, who: ModelsWrite
) -> Response:
    """Remove ``alias``; predictions that name it are answered 404 from the next one."""
    aliases.remove(session, name, alias, who.key_id, who.name)
    request.app.state.batcher.forget_limits(name)
    return Response(status_code=204)


@router.get("/models/{name}/alias-history")
def alias_history(
    name: str,
    session: SessionDep,
    alias: Annotated[str | None, Query(pattern=ALIAS_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AliasHistoryPage:
    """Every move and removal of the model's aliases (of ``alias`` alone, if given), newest
    first: from which version to which (null for a new alias, and for a removal), by which
    key (``by_key``, ``by_name``), and when."""
    return aliases.history(session, name, alias=alias, limit=limit, offset=offset)
