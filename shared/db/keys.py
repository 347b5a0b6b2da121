"""API keys in the database: created (the key is returned once), listed, revoked, checked."""

from __future__ import annotations

import secrets
from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session

from shared.auth import Principal, check_scopes, check_secret, hash_secret, new_key, parse_key
from shared.errors import NotFound
from shared.jobstate import now

from .models import ApiKey


class KeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


def create_key(session: Session, name: str, scopes: list[str]) -> tuple[KeyOut, str]:
    """A new key; the whole key is returned here and never stored or shown again."""
    key_id, secret, key = new_key()
    salt = secrets.token_hex(16)
    row = ApiKey(
        id=key_id,
        name=name,
        salt=salt,
        secret_hash=hash_secret(salt, secret),
        scopes=check_scopes(scopes),
        created_at=now(),
    )
    session.add(row)
    session.flush()
    return KeyOut.model_validate(row, from_attributes=True), key


def list_keys(session: Session) -> list[KeyOut]:
    rows = session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at))
    return [KeyOut.model_validate(r, from_attributes=True) for r in rows]


def revoke_key(session: Session, key_id: str) -> KeyOut:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key '{key_id}'", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = now()
    session.flush()
    return KeyOut.model_validate(row, from_attributes=True)


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal a key stands for; None for a malformed, unknown or revoked key."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    row = session.get(ApiKey, parsed[0])
    if row is None or row.revoked_at is not None:
        return None
    if not check_secret(row.salt, row.secret_hash, parsed[1]):
        return None
    return Principal(row.id, row.name, frozenset(row.scopes))
