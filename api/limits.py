"""A request body over ``TORCHQUEUE_MAX_REQUEST_MB`` is refused with 413, before it is
read into memory: by its Content-Length, or while it streams in. A data set's upload,
which streams to disk, has its own limit (``TORCHQUEUE_MAX_DATASET_MB``) instead. A URL
holding a NUL character is refused with 422: no name or id has one, and PostgreSQL
cannot compare a text with one."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import response_of
from shared.config import get_settings
from shared.errors import InvalidSpec, TooLarge

# The one route whose body has a limit of its own (api.routes.datasets streams it to disk).
UPLOAD_PATH = "/v1/datasets"


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            error = InvalidSpec("the URL holds a NUL character", field="url")
            await response_of(error)(scope, receive, send)
            return
        settings = get_settings()
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        limit_mb = settings.max_dataset_mb if upload else settings.max_request_mb
        limit = int(limit_mb * 1024 * 1024)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _refuse(scope, receive, send, limit)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            # A streamed body that grows past the limit: answer 413 now, and tell the app
            # the client went away, so that it stops reading and answers nothing more.
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not refused:
                    refused = True
                    await _refuse(scope, receive, send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    what = "the data set" if scope["path"] == UPLOAD_PATH else "the request body"
    error = TooLarge(f"{what} is over the limit of {limit // (1024 * 1024)} MB")
    await response_of(error)(scope, receive, send)
