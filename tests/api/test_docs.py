"""The documentation pages work without internet, and the schema declares the API key."""

from __future__ import annotations

import re
from typing import Any

import pytest

_ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_only_local_assets(api_client: Any, page: str) -> None:
    response = api_client.get(page, headers={"Authorization": ""})
    assert response.status_code == 200
    assets = _ASSET.findall(response.text)
    assert assets, response.text
    assert "//" not in response.text.replace("window.location.origin", ""), response.text
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png"}
    for url in assets:
        assert url.startswith("/"), url
        asset = api_client.get(url, headers={"Authorization": ""})
        assert asset.status_code == 200, url
        assert kinds[url.rsplit(".", 1)[-1]] in asset.headers["content-type"], url
        assert len(asset.content) > 1000, url


def test_every_v1_operation_declares_the_bearer_key(api_client: Any) -> None:
    schema = api_client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    [(name, scheme)] = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    operations = [(path, op) for path, ops in schema["paths"].items() for op in ops.values()]
    for path, op in operations:
        declared = op.get("security")
        if path.startswith("/v1") or path == "/metrics":  # Prometheus's key, too
            assert declared == [{name: []}], path
        else:
            assert declared is None, path


def test_an_authorized_try_it_out_is_answered(api_client: Any) -> None:
    # What the page sends once a key is entered under Authorize; our own 401 without it.
    assert api_client.get("/v1/families").status_code == 200
    bare = api_client.get("/v1/families", headers={"Authorization": ""})
    assert bare.status_code == 401 and bare.json()["type"] == "unauthorized"
    assert bare.headers["www-authenticate"] == "Bearer"
