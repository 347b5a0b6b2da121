"""The one place where errors become HTTP responses: a status, a machine-readable ``type``,
a human ``detail`` and, where there is one, the ``field`` at fault. Never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db.session import UNREACHABLE
from shared.errors import InvalidSpec, TorchqueueError, Unavailable
from shared.suggest import unknown_field

log = logging.getLogger(__name__)

_WHERE = {"body", "query", "path", "header"}


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``('body', 'dataset', 'inline', 'inputs', 3)`` → ``dataset.inline.inputs[3]``;
    pydantic's tags for union branches (``list[str]``, ``int``) are left out, a dict's
    dotted key (a sweep's ``training.learning_rate``) kept."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            (i == 0 and part in _WHERE)
            or not all(word.isidentifier() for word in str(part).split("."))
            or part
            in (
                "int",
                "str",
                "float",
                "bool",
                "literal",
            )
        ):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _near_miss(request: Request, error: dict[str, Any]) -> str:
    """For an unknown field of the body, the known field it was probably meant to be."""
    loc = error.get("loc", ())
    body = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body, "field_info", None), "annotation", None)
    if error.get("type") != "extra_forbidden" or loc[:1] != ("body",) or model is None:
        return ""
    return unknown_field(model, loc[1:])


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": field_name(e.get("loc", ())),
            "message": str(e.get("msg", "invalid")) + _near_miss(request, e),
        }
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    invalid = InvalidSpec(f"{first['field']}: {first['message']}", field=first["field"])
    return response_of(invalid, errors=errors)


def response_of(exc: TorchqueueError, **extra: Any) -> JSONResponse:
    """The answer for one of our errors: its status, and its ``to_dict`` (with ``extra``).
    Also an ASGI app, for a middleware that refuses a request before the app sees it."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.to_dict() | extra, status_code=exc.status, headers=headers)


async def _ours(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TorchqueueError)
    if exc.status >= 500:
        log.error("%s: %s", exc.type, exc.detail)
    return response_of(exc)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found" if exc.status_code == 404 else "http_error"
    return JSONResponse(
        {"type": kind, "detail": str(exc.detail)},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    # One line, no traceback: the cause is outside this process.
    log.error(
        "the database failed %s %s: %s", request.method, request.url.path, str(exc).splitlines()[0]
    )
    return response_of(Unavailable("the database cannot be reached; try again"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return response_of(TorchqueueError("internal error; the server log has the details"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(TorchqueueError, _ours)
    app.add_exception_handler(StarletteHTTPException, _http)
    # A database that stops answering mid-request (connection refused, server restart,
    # a connection dropped at COMMIT).
    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _database_down)
    app.add_exception_handler(Exception, _unexpected)
