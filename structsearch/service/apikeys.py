"""API keys: random bearer tokens, stored as SHA-256 only.

A key is 32 random bytes (``ss_`` + URL-safe base64), so a plain SHA-256 is enough: there is
nothing to brute-force that a salt or a slow hash would protect. The key is shown once, when
created (``structsearch apikey create``), and cannot be recovered from the database.

A key has a scope (``user``: its own searches; ``admin``: every search), may expire, and records
when it was last used -- at most one write per key per :data:`TOUCH_EVERY`, not one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import datetime, timedelta

from structsearch.errors import NameTaken, StructsearchError
from structsearch.service.database import Database
from structsearch.service.repository import ApiKeyRepository
from structsearch.service.tables import ApiKey, KeyScope, Search, utcnow

KEY_PREFIX = "ss_"
#: ``last_used_at`` is written when it is older than this (so a busy key costs one write a minute).
TOUCH_EVERY = timedelta(minutes=1)
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
#: Longest lifetime ``--expires`` takes (beyond it, a key that never expires says what it means).
MAX_LIFETIME = timedelta(days=3660)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_lifetime(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``2w`` as a duration (a one-line error otherwise)."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text.lower())
    if m is None or int(m.group(1)) == 0:
        raise StructsearchError(f"invalid key lifetime '{text}': give a positive number with m, h, d or w, e.g. 30d")
    lifetime = int(m.group(1)) * _UNITS[m.group(2)]
    if lifetime > MAX_LIFETIME:
        raise StructsearchError(f"invalid key lifetime '{text}': at most {MAX_LIFETIME.days}d; omit it for no expiry")
    return lifetime


def create_key(db: Database, name: str, scope: KeyScope = KeyScope.user, lifetime: timedelta | None = None) -> str:
    """Store a new key named ``name`` and return it (the only time it is visible)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise StructsearchError("an API key needs a name of 1 to 100 characters")
    key = new_key()
    expires_at = utcnow() + lifetime if lifetime is not None else None
    with db.session() as s:
        try:
            ApiKeyRepository(s).add(name, hash_key(key), key[: len(KEY_PREFIX) + 6], scope, expires_at)
        except NameTaken:
            raise NameTaken(f"an API key named '{name}' exists; pick another name or revoke it first") from None
    return key


def authenticate(db: Database, key: str, now: datetime | None = None) -> ApiKey | None:
    """The usable key matching ``key`` (not revoked, not expired), or None.

    Lookup by hash; compare again in constant time. Records the use when the last recorded one is
    older than :data:`TOUCH_EVERY`.
    """
    return authenticate_for(db, key, None, now)[0]


def authenticate_for(
    db: Database, key: str, search_id: uuid.UUID | None, now: datetime | None = None
) -> tuple[ApiKey | None, Search | None]:
    """:func:`authenticate`, and the search ``search_id`` read by the same query (None when it
    does not exist or the key is unusable): a request about one search costs one statement."""
    now = now or utcnow()
    digest = hash_key(key)
    with db.session() as s:
        repo = ApiKeyRepository(s)
        row, search = repo.active_by_hash(digest, now, search_id)
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None, None
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
            repo.touch(row.id, now, now - TOUCH_EVERY)
    return row, search
