"""The service's own tables, all prefixed ``ss_``.

They share the database with Optuna's tables (``studies``, ``trials``, ...) and procrastinate's
(``procrastinate_*``); the prefix keeps them apart, and ``alembic/env.py`` only ever looks at
``ss_`` tables. Trials themselves live in Optuna's tables: a search row points at its study by
name and holds what Optuna does not know (the submitted spec, the service status).

:class:`TrialRow` (``ss_trials``) is the read model of those trials: one row per Optuna trial,
written by the worker as trials start and finish (:mod:`structsearch.service.readmodel`), with the
figures the API filters and sorts on as indexed columns. Optuna's storage stays the source of truth
(the sampler reads it); ``ss_trials`` and the counts on ``ss_searches`` exist so that no request
reads Optuna's storage, which takes seconds for a 10,000-trial study.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Text,
    Uuid,
    text,
)
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
    #: The teacher's score on the validation data (%), once the first trial's job measured it.
    teacher_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: What the search found doubtful but not fatal (one line each; e.g. a teacher at chance).
    warnings: Mapped[list[str]] = mapped_column(JsonDoc, default=list, server_default=text("'[]'"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("ss_api_keys.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # -- trial counts, kept by the read model with each trial it writes (``readmodel.COUNTERS``) --
    #: Every trial of the study, warm-start copies included; with ``trials_changed_at``, the ETag.
    n_trials: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_waiting: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_running: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_complete: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_pruned: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Finished warm-start copies.
    n_copied: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The search's own complete trials (copies apart), trained ones, over-budget ones.
    n_own_complete: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_trained: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    n_over_budget: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Scored, feasible trials (copies included): the candidates of the search's best.
    n_feasible: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The best feasible scored trial: highest score, then fewest MACs, then lowest number.
    best_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: When the read model last changed a trial of this search (the ETag's second half).
    trials_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def search_status(self) -> SearchStatus:
        return SearchStatus(self.status)


class TrialRow(Base):
    """One trial of a search as the API reads it (the read model; see the module docstring).

    Built from the trial's :class:`~structsearch.search.record.TrialAttrs` by
    :func:`structsearch.service.readmodel.row_of`. ``scored`` marks the rows ``best`` and fronts
    look at (complete, trained, with a score, MACs and params), so their indexes can be partial.
    """

    __tablename__ = "ss_trials"
    __table_args__ = (
        CheckConstraint("state IN ('waiting', 'running', 'complete', 'pruned', 'fail')", name="state_known"),
        # best within a budget: walk the scored rows of a search by score until one fits
        Index(
            "ix_ss_trials_best",
            "search_id",
            text("score DESC"),
            "macs",
            "number",
            postgresql_where=text("scored"),
            sqlite_where=text("scored"),
        ),
        # tight budgets and MACs fronts: the scored rows of a search by cost
        Index("ix_ss_trials_macs", "search_id", "macs", postgresql_where=text("scored"), sqlite_where=text("scored")),
        Index(
            "ix_ss_trials_params", "search_id", "params", postgresql_where=text("scored"), sqlite_where=text("scored")
        ),
        # /trials?state=...: keyset pages of one state
        Index("ix_ss_trials_state", "search_id", "state", "number"),
        # /events: the changes of a search after the last one a client saw
        Index("ix_ss_trials_seq", "search_id", "seq"),
        # baseline gains on /pareto: the few baseline rows of a search
        Index(
            "ix_ss_trials_baseline",
            "search_id",
            postgresql_where=text("baseline IS NOT NULL"),
            sqlite_where=text("baseline IS NOT NULL"),
        ),
    )

    # keyset pagination and the upsert key: the primary key (search_id, number)
    search_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ss_searches.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Optuna's id of the trial (to re-read it for ``structsearch db check``).
    trial_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    spec_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spec: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, nullable=True)
    macs: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_device: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_runtime: Mapped[str | None] = mapped_column(String(32), nullable=True)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    memory_device: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolution: Mapped[int | None] = mapped_column(Integer, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Detection studies: mAP@.5 (%) beside the score (which is mAP@[.5:.95]); None otherwise.
    map50: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    trained: Mapped[bool] = mapped_column(Boolean)
    #: Every constraint <= 0 (within the search's budgets).
    feasible: Mapped[bool] = mapped_column(Boolean)
    #: Complete, trained, with a score, MACs and params: a result (``results.scored``).
    scored: Mapped[bool] = mapped_column(Boolean)
    baseline: Mapped[str | None] = mapped_column(String(32), nullable=True)
    duplicate_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    copied_from: Mapped[str | None] = mapped_column(String(200), nullable=True)
    artifact: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Taken from :data:`TRIAL_SEQ` each time the row changes: ``/events`` follows a search by it.
    seq: Mapped[int] = mapped_column(BigInteger)


#: Orders every change of ``ss_trials`` (PostgreSQL; the read model is written on PostgreSQL only).
TRIAL_SEQ = Sequence("ss_trials_seq", metadata=Base.metadata)


class FrontRow(Base):
    """A search's Pareto front on one cost axis, kept up to date by every write of its trials.

    A front at 100,000 trials takes a scan of every scored row (about a second); the read model's
    writer folds each written row into the kept front instead (:mod:`structsearch.service.fronts`),
    so ``/pareto`` reads these numbers and their rows and no API process computes a front.
    """

    __tablename__ = "ss_fronts"

    search_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ss_searches.id", ondelete="CASCADE"), primary_key=True)
    cost: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: Trial numbers on the front, cheapest first.
    numbers: Mapped[list[int]] = mapped_column(JsonDoc)
