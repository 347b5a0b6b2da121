"""API keys: what a key looks like, how its secret is hashed, and what its scopes allow.

A key reads ``tq_<id>_<secret>``. The database keeps the id, a random salt and the
HMAC-SHA256 of the secret under that salt, never the secret; a check recomputes the hash
and compares in constant time. The secret carries 256 random bits, so one hash round is
enough (a password would need a slow hash; a key does not).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

SCOPES = (
    "jobs:submit",
    "jobs:read",
    "models:read",
    "models:write",
    "datasets:read",
    "datasets:write",
    "metrics:read",
    "admin",
)
_KEY = re.compile(r"^tq_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and name, and its scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    @property
    def viewer(self) -> str | None:
        """Whose records this caller sees: its own key's, or (None) everyone's."""
        return None if self.is_admin else self.key_id


def new_key() -> tuple[str, str, str]:
    """A fresh key: its id, its secret, and the whole key to hand out once."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return key_id, secret, f"tq_{key_id}_{secret}"


def parse_key(key: str) -> tuple[str, str] | None:
    match = _KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(salt: str, secret: str) -> str:
    return hmac.new(salt.encode(), secret.encode(), hashlib.sha256).hexdigest()


def check_secret(salt: str, expected: str, secret: str) -> bool:
    return hmac.compare_digest(hash_secret(salt, secret), expected)


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes are some of {', '.join(SCOPES)}; not {unknown or 'none'}")
    return sorted(set(scopes))
