"""``GET /metrics``: the API's Prometheus metrics (``api.metrics``), for a key with the
scope ``metrics:read`` (give Prometheus a key of its own that can do nothing else)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import require
from api.metrics import metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    dependencies=[Depends(require("metrics:read"))],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def scrape() -> Response:
    """The Prometheus text format; the database's figures are read now, in a thread."""
    body = await run_in_threadpool(generate_latest, metrics().registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
