"""Valid keys are kept by each API process for at most ``TORCHQUEUE_AUTH_CACHE_SECONDS``:
a key revoked by another process stops working within that bound, one revoked by this
process at once, and an invalid key is never kept."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from api.auth import KeyCache
from shared.auth import Principal
from shared.db import keys
from shared.db.models import ApiKey
from shared.db.session import session_scope
from shared.jobstate import now
from tests.helpers import unique

# Long enough that two requests and a revocation fit in it on a loaded machine.
BOUND = 2.0


def _key(*scopes: str) -> str:
    with session_scope() as s:
        _, key = keys.create_key(s, unique("cached"), list(scopes or ["jobs:read"]))
    return key


def _id(key: str) -> str:
    return key.split("_")[1]


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _status(client: Any, key: str) -> int:
    return int(client.get("/v1/jobs", headers=_as(key)).status_code)


def _revoke_elsewhere(key: str) -> None:
    """As another API process or the command line does: in the database, unseen by the
    sessions of this process's ORM."""
    with session_scope() as s:
        s.execute(sa.update(ApiKey).where(ApiKey.id == _id(key)).values(revoked_at=now()))


def test_a_key_revoked_elsewhere_works_until_the_bound_then_is_refused(
    api_client: Any, setting: Any
) -> None:
    setting("TORCHQUEUE_AUTH_CACHE_SECONDS", str(BOUND))
    key = _key()
    assert _status(api_client, key) == 200
    _revoke_elsewhere(key)
    assert _status(api_client, key) == 200  # served from the cache: no database read
    time.sleep(BOUND + 0.3)
    response = api_client.get("/v1/jobs", headers=_as(key))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_a_scope_removed_elsewhere_is_refused_after_the_bound(
    api_client: Any, setting: Any
) -> None:
    setting("TORCHQUEUE_AUTH_CACHE_SECONDS", "0.5")
    key = _key("jobs:read")
    assert _status(api_client, key) == 200
    with session_scope() as s:
        s.execute(sa.update(ApiKey).where(ApiKey.id == _id(key)).values(scopes=["models:read"]))
    time.sleep(0.8)
    assert _status(api_client, key) == 403


def test_a_key_revoked_in_this_process_is_refused_at_once(api_client: Any, setting: Any) -> None:
    setting("TORCHQUEUE_AUTH_CACHE_SECONDS", "3600")
    key, other = _key(), _key()
    assert _status(api_client, key) == 200 and _status(api_client, other) == 200
    with session_scope() as s:
        keys.revoke_key(s, _id(key))
    assert _status(api_client, key) == 401
    assert _status(api_client, other) == 200  # only the revoked key's entry goes


def test_without_the_cache_a_revocation_elsewhere_is_refused_at_once(
    api_client: Any, setting: Any
) -> None:
    setting("TORCHQUEUE_AUTH_CACHE_SECONDS", "0")
    key = _key()
    assert _status(api_client, key) == 200
    _revoke_elsewhere(key)
    assert _status(api_client, key) == 401


def test_invalid_keys_are_not_kept_and_a_new_key_works_at_once(
    api_client: Any, setting: Any
) -> None:
    setting("TORCHQUEUE_AUTH_CACHE_SECONDS", "3600")
    key = _key()
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert _status(api_client, wrong) == 401
    assert _status(api_client, wrong) == 401  # nor does a refusal stay cached as a pass
    assert _status(api_client, key) == 200
    assert _status(api_client, _key()) == 200


def test_the_cache_is_bounded_and_keeps_no_key() -> None:
    cache = KeyCache(size=2)
    principals = [Principal(f"id{i}", f"name{i}", frozenset({"jobs:read"})) for i in range(3)]
    for i, principal in enumerate(principals):
        cache.put(bytes([i]) * 32, principal, cache.ticket())
    assert len(cache) == 2
    assert cache.get(bytes([0]) * 32, 60) is None  # the first added went first
    assert cache.get(bytes([2]) * 32, 60) == principals[2]
    assert cache.get(bytes([2]) * 32, 0) is None  # no longer than the bound asked for
    # A lookup that began before a key was forgotten is not kept: it may have read the
    # key as it was before its revocation.
    ticket = cache.ticket()
    cache.forget("id1")
    cache.put(bytes([1]) * 32, principals[1], ticket)
    assert cache.get(bytes([1]) * 32, 60) is None
