"""Reading and writing the ``ss_`` tables. Every method works inside the caller's session.

Concurrency contract (the API's threads and any number of workers on many machines write here):

* A status changes only through :meth:`SearchRepository.transition`, one conditional ``UPDATE
  ... WHERE status IN (allowed)``: the database serialises competing writers and exactly one of
  them wins. Final statuses (done, cancelled, failed) are never left, so a late worker cannot
  turn a cancelled search back into running or done.
* Names are claimed by the unique constraint on ``ss_searches.name``, not by a prior check:
  :meth:`SearchRepository.add` reports a lost race as :class:`NameTaken` and the caller picks
  another name.
* Nothing here holds a row lock across a trial: workers read a status, then act, then use a
  conditional transition; the status they read may be stale by then and that is harmless.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Row, Select, Update, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from structsearch.errors import NameTaken
from structsearch.service.tables import ApiKey, KeyScope, Search, SearchStatus, TrialRow, utcnow

#: In the rows of :meth:`SearchRepository.page` and :meth:`SearchRepository.with_best`, the best
#: trial's ``ss_trials`` columns are named with this prefix (a search row has its own ``best_number``).
BEST = "best_trial_"


@functools.cache
def _with_best() -> Select[Any]:
    """Every column of the searches and of each one's best trial (all NULL when it has none): one
    primary-key lookup per search, in the same statement. Built once: building its ~50 labelled
    columns took 0.8 ms, twice the query's own cost."""
    best = TrialRow.__table__.alias("best")
    return select(*Search.__table__.c, *(c.label(BEST + c.name) for c in best.c)).outerjoin(
        best, and_(best.c.search_id == Search.id, best.c.number == Search.best_number)
    )


class SearchRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, search: Search) -> Search:
        """Insert ``search``; raises :class:`NameTaken` when its name is in use (nothing written)."""
        try:
            with self.session.begin_nested():
                self.session.add(search)
        except IntegrityError:
            raise NameTaken(search.name) from None
        return search

    def get(self, search_id: uuid.UUID) -> Search | None:
        return self.session.get(Search, search_id)

    def with_best(self, search_id: uuid.UUID) -> Row[Any] | None:
        """The search's columns and its best trial's (:data:`BEST`), None when it does not exist."""
        return self.session.execute(_with_best().where(Search.id == search_id)).first()

    def page(
        self, offset: int, limit: int, status: SearchStatus | None = None, owner: ApiKey | None = None
    ) -> tuple[Sequence[Row[Any]], int]:
        """Newest first; returns one page (as :meth:`with_best`) and the number of matching searches.

        With ``owner``, only the searches that key may see (its own; all for an admin key).
        """
        q = _with_best()
        count = select(func.count()).select_from(Search)
        if status is not None:
            q = q.where(Search.status == status.value)
            count = count.where(Search.status == status.value)
        if owner is not None and not owner.is_admin:
            q = q.where(Search.api_key_id == owner.id)
            count = count.where(Search.api_key_id == owner.id)
        rows = self.session.execute(q.order_by(Search.created_at.desc(), Search.id).offset(offset).limit(limit)).all()
        return rows, int(self.session.scalar(count) or 0)

    def names_owned_by(self, api_key_id: int | None) -> set[str]:
        """Study names of the searches submitted with this key (``None``: those with no key)."""
        owner = Search.api_key_id.is_(None) if api_key_id is None else Search.api_key_id == api_key_id
        return set(self.session.scalars(select(Search.name).where(owner)).all())

    def status_of(self, search_id: uuid.UUID) -> SearchStatus | None:
        value = self.session.scalar(select(Search.status).where(Search.id == search_id))
        return None if value is None else SearchStatus(value)

    def transition(
        self,
        search_id: uuid.UUID,
        to: SearchStatus,
        allowed_from: Iterable[SearchStatus],
        error: str | None = None,
    ) -> bool:
        """Set ``to`` if the current status is in ``allowed_from``; True when this call changed it."""
        values: dict[str, object] = {"status": to.value, "updated_at": utcnow()}
        if error is not None:
            values["error"] = error[:2000]
        return _changed_one(
            self.session,
            update(Search)
            .where(Search.id == search_id, Search.status.in_([s.value for s in allowed_from]))
            .values(**values)
            .execution_options(synchronize_session=False),
        )

    def note_teacher(self, search_id: uuid.UUID, score: float, warning: str | None) -> None:
        """Keep the teacher's validation score on the search, and ``warning`` among its warnings
        (once: two workers' first jobs may both measure the teacher)."""
        search = self.get(search_id)
        if search is None:
            return
        search.teacher_score = score
        if warning is not None and warning not in search.warnings:
            search.warnings = [*search.warnings, warning[:2000]]


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        name: str,
        key_hash: str,
        prefix: str,
        scope: KeyScope = KeyScope.user,
        expires_at: datetime | None = None,
    ) -> ApiKey:
        """Insert a key; raises :class:`NameTaken` when the name is in use."""
        row = ApiKey(name=name, key_hash=key_hash, prefix=prefix, scope=scope.value, expires_at=expires_at)
        try:
            with self.session.begin_nested():
                self.session.add(row)
        except IntegrityError:
            raise NameTaken(name) from None
        return row

    def active_by_hash(
        self, key_hash: str, now: datetime | None = None, search_id: uuid.UUID | None = None
    ) -> tuple[ApiKey | None, Search | None]:
        """The key with this hash, unless it is revoked or expired (at ``now``), and in the same
        statement the search ``search_id`` (None when there is no such search, or no key)."""
        now = now or utcnow()
        found = self.session.execute(
            select(ApiKey, Search)
            .outerjoin(Search, Search.id == search_id)
            .where(
                ApiKey.key_hash == key_hash,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        ).first()
        return (None, None) if found is None else (found[0], found[1])

    def touch(self, key_id: int, now: datetime, unless_after: datetime) -> None:
        """Record a use at ``now`` unless one after ``unless_after`` is recorded (another process's)."""
        self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= unless_after))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )

    def all(self) -> Sequence[ApiKey]:
        return self.session.scalars(select(ApiKey).order_by(ApiKey.id)).all()

    def revoke(self, name: str, when: datetime | None = None) -> bool:
        return _changed_one(
            self.session,
            update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=when or utcnow()),
        )


def _changed_one(session: Session, statement: Update) -> bool:
    """Run an ``UPDATE``; True when it changed exactly one row."""
    # An UPDATE without RETURNING always yields a CursorResult; Session.execute is typed as Result.
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount == 1
