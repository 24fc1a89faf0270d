"""The service's own tables, all prefixed ``ss_``.

They share the database with Optuna's tables (``studies``, ``trials``, ...) and procrastinate's
(``procrastinate_*``); the prefix keeps them apart, and ``alembic/env.py`` only ever looks at
``ss_`` tables. Trials themselves live in Optuna's tables: a search row points at its study by
name and holds only what Optuna does not know (the submitted spec, the service status).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Deterministic constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSONB on PostgreSQL (indexable, compact), plain JSON elsewhere (SQLite).
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class SearchStatus(StrEnum):
    """Life of a search. ``done``, ``cancelled`` and ``failed`` are final: nothing leaves them."""

    queued = "queued"
    running = "running"
    done = "done"
    cancelled = "cancelled"
    failed = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({SearchStatus.done, SearchStatus.cancelled, SearchStatus.failed})
ACTIVE_STATUSES = frozenset({SearchStatus.queued, SearchStatus.running})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class KeyScope(StrEnum):
    """What a key may do: ``user`` keys see and change their own searches; ``admin`` keys all."""

    user = "user"
    admin = "admin"


class ApiKey(Base):
    """A bearer token allowed to submit and cancel. Only its SHA-256 is stored."""

    __tablename__ = "ss_api_keys"
    __table_args__ = (CheckConstraint("scope IN ('user', 'admin')", name="scope_known"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: hex SHA-256 of the whole key; keys are 32 random bytes, so no salt or slow hash is needed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The key's first characters, to tell keys apart in listings without revealing them.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    scope: Mapped[str] = mapped_column(String(16), default=KeyScope.user.value, server_default=KeyScope.user.value)
    #: After this the key is refused (401); None: it does not expire.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: When the key last authenticated a request, to within a minute (see ``apikeys.TOUCH_EVERY``).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def is_admin(self) -> bool:
        return self.scope == KeyScope.admin.value

    def owns(self, search: Search) -> bool:
        """Whether this key may see and change ``search``: it submitted it, or it is an admin key."""
        return self.is_admin or search.api_key_id == self.id


class Search(Base):
    """A submitted search: one Optuna study (``name``) plus the service's view of its progress."""

    __tablename__ = "ss_searches"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'done', 'cancelled', 'failed')", name="status_known"),
        Index("ix_ss_searches_created_at", "created_at"),
        Index("ix_ss_searches_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    #: The Optuna study name; unique across the database (``requested_name`` plus a suffix when taken).
    name: Mapped[str] = mapped_column(String(100), unique=True)
    requested_name: Mapped[str] = mapped_column(String(100))
    #: The validated spec as submitted (with ``name`` set to the study name).
    spec: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    status: Mapped[str] = mapped_column(String(16), default=SearchStatus.queued.value)
    trials_requested: Mapped[int] = mapped_column(Integer)
    #: Why the search failed (one line), or who cancelled it.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("ss_api_keys.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    @property
    def search_status(self) -> SearchStatus:
        return SearchStatus(self.status)
