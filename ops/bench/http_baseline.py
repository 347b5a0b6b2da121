"""The HTTP ceiling the sync figures are measured against: the same server settings as the
API (uvicorn, with httptools and uvloop when present), the same request body, a fixed
answer of the size of a 1-row prediction's.

- ``bare``: a plain ASGI callable that reads the body, parses its JSON and answers;
- ``fastapi``: FastAPI with the sync route's own request model (``ServeRequest``).

    python -m ops.bench.http_baseline bare|fastapi PORT
"""

import json
import sys
from typing import Any

# What a 1-row mlp prediction answers, less the ids: ten floats.
OUTPUTS = [{"label": 3, "probabilities": [0.1] * 10}]
ANSWER = json.dumps(
    {"job_id": "0" * 36, "model_name": "bench-mlp", "model_version": 1, "outputs": OUTPUTS}
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    json.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def fastapi_app() -> Any:
    from fastapi import FastAPI, Response

    from shared.schemas import ServeRequest

    app = FastAPI()

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, req: ServeRequest) -> Response:
        return Response(ANSWER, media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    kind, port = sys.argv[1], int(sys.argv[2])
    app = bare if kind == "bare" else fastapi_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
