"""API keys: random bearer tokens, stored as SHA-256 only.

A key is 32 random bytes (``ss_`` + URL-safe base64), so a plain SHA-256 is enough: there is
nothing to brute-force that a salt or a slow hash would protect. The key is shown once, when
created (``structsearch apikey create``), and cannot be recovered from the database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from structsearch.errors import NameTaken, StructsearchError
from structsearch.service.database import Database
from structsearch.service.repository import ApiKeyRepository
from structsearch.service.tables import ApiKey

KEY_PREFIX = "ss_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, name: str) -> str:
    """Store a new key named ``name`` and return it (the only time it is visible)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise StructsearchError("an API key needs a name of 1 to 100 characters")
    key = new_key()
    with db.session() as s:
        try:
            ApiKeyRepository(s).add(name, hash_key(key), key[: len(KEY_PREFIX) + 6])
        except NameTaken:
            raise NameTaken(f"an API key named '{name}' exists; pick another name or revoke it first") from None
    return key


def authenticate(db: Database, key: str) -> ApiKey | None:
    """The active key matching ``key``, or None. Lookup by hash; compare again in constant time."""
    digest = hash_key(key)
    with db.session() as s:
        row = ApiKeyRepository(s).active_by_hash(digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row
