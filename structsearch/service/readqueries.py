"""The API's answers from the read model (``ss_trials``): best within budgets, fronts, trial pages.

Each is a query or two on indexes of ``ss_trials`` (see :class:`~structsearch.service.tables.TrialRow`),
never a read of Optuna's trials. They give what :mod:`structsearch.search.results` gives from the
trials themselves -- same candidate, same ordering, same ties (highest score, then fewest MACs,
then lowest trial number) -- which the tests check against the library; where the library's own
code can be reused on a handful of rows (baseline gains, the nearest candidate of a failed
``best``), it is.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from sqlalchemy import Row, Select, and_, select
from sqlalchemy.orm import Session

from structsearch.errors import StructsearchError
from structsearch.search.recheck import RECHECK_ATTR
from structsearch.search.results import (
    BUDGETS,
    BaselineGain,
    TrialRecord,
    baseline_gains,
    best_under_budget,
    budget_limit,
)
from structsearch.service import fronts
from structsearch.service.database import Database
from structsearch.service.readmodel import (
    COUNTERS,
    FINISHED_STATES,
    RECORD_FIELDS,
    STATE_COUNTS,
    record_from_row,
    study_attrs,
)
from structsearch.service.singleflight import SingleFlight
from structsearch.service.tables import Search, TrialRow

#: Study attributes the API shows or needs: teacher figures (percentage budgets), re-checks, fine-tunings.
FINETUNE_ATTR = "finetune"
TEACHER_ATTRS = tuple(attr for attr, _, _ in BUDGETS.values())


def etag(search: Search, *extra: Any) -> str:
    """A weak ETag of what a search's answers are made of: its trial count and last trial change
    (moved by every read-model write), its last status change, and anything else the answer
    shows (study attributes). The API also keeps bodies by it (:mod:`api.bodycache`)."""
    changed = search.trials_changed_at.isoformat() if search.trials_changed_at else "-"
    shown = json.dumps([search.updated_at, *extra], sort_keys=True, default=str)
    digest = hashlib.sha256(shown.encode()).hexdigest()[:12]
    return f'W/"{search.n_trials}-{changed}-{digest}"'


def _records(session: Session, study: str, q: Select[TrialRow]) -> list[TrialRecord]:
    return [record_from_row(study, r) for r in session.scalars(q)]


def _scored(search: Search) -> Select[TrialRow]:
    return select(TrialRow).where(TrialRow.search_id == search.id, TrialRow.scored)


def best_within(db: Database, search: Search, budgets: dict[str, str | None]) -> TrialRecord:
    """``best_under_budget(..., study=search)`` from the read model: one query on ``ix_ss_trials_best``.

    ``budgets``: budget kind (flops, params, latency, memory) -> budget text, as validated by the
    caller. When nothing fits, the library itself answers from the search's scored rows (the
    404 naming the nearest candidate, or "no trained candidates yet").
    """
    storage = _StudyAttrsOnly(search.name, study_attrs(db, search.name, TEACHER_ATTRS))
    study = optuna.load_study(study_name=search.name, storage=storage)
    limits = {what: lim for what, text in budgets.items() if (lim := budget_limit(text, what, study)) is not None}
    fits = [getattr(TrialRow, BUDGETS[what][1]) <= lim for what, lim in limits.items()]
    with db.session() as s:
        found = _records(
            s,
            search.name,
            _scored(search).where(and_(*fits)).order_by(TrialRow.score.desc(), TrialRow.macs, TrialRow.number).limit(1),
        )
        if found:
            return found[0]
        everything = _records(s, search.name, _scored(search).order_by(TrialRow.number))
    return best_under_budget(
        budget_flops=budgets.get("flops"),
        budget_params=budgets.get("params"),
        budget_latency=budgets.get("latency"),
        budget_memory=budgets.get("memory"),
        study=search.name,
        storage=storage,
        records_of=lambda _: everything,
    )


class _StudyAttrsOnly(optuna.storages.InMemoryStorage):
    """A storage holding one study with the given attributes and no trials (in memory, built per
    call), so the library resolves percentages and words its errors exactly as for the CLI."""

    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        super().__init__()
        sid = self.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
        for k, v in attrs.items():
            self.set_study_user_attr(sid, k, v)


#: Fronts being computed in this process (a search with none kept yet): one computation per search.
_COMPUTING = SingleFlight()


def pareto(db: Database, search: Search, cost: str) -> list[TrialRecord]:
    """``pareto_front(records, cost)`` from the read model: the front kept in ``ss_fronts`` (by
    the writer of the rows, :mod:`structsearch.service.fronts`) and its rows, by primary key.

    A search with no kept front (rows written before migration 0006) has its fronts computed
    once, in SQL under the search's lock, by one request of each process at most.
    """
    front = _kept_front(db, search, cost)
    if front is None:
        _COMPUTING.run(search.id, functools.partial(_compute_fronts, db, search.id))
        front = _kept_front(db, search, cost)
    return front or []


def _kept_front(db: Database, search: Search, cost: str) -> list[TrialRecord] | None:
    """The kept front's records, None when none is kept (one transaction: the numbers and their
    rows agree)."""
    with db.session() as s:
        numbers = fronts.kept_numbers(s, search.id, cost)
        if numbers is None:
            return None
        rows = {r["number"]: r for r in s.execute(_numbered(search, numbers)).mappings()}
    return [record_from_row(search.name, rows[n]) for n in numbers if n in rows]


def _compute_fronts(db: Database, search_id: uuid.UUID) -> None:
    with db.session() as s:
        fronts.recompute(s, search_id, only_missing=True)


def _numbered(search: Search, numbers: Sequence[int]) -> Select[Any]:
    """The rows of these trial numbers (by the primary key), the columns a record shows."""
    cols = [TrialRow.__table__.c[c] for c in ("number", *RECORD_FIELDS)]
    return select(*cols).where(TrialRow.search_id == search.id, TrialRow.number.in_(list(numbers)))


def gains(db: Database, search: Search) -> list[BaselineGain]:
    """``baseline_gains`` of the search from its baselines and, for each, its best cheaper searched
    rival (one indexed query each): the library's answer on those rows is its answer on all rows."""
    with db.session() as s:
        # exactly the partial index's condition (a state filter here once made the planner walk
        # every row of the search by state); only finished trials count, as for the library
        baselines = [
            r
            for r in _records(
                s, search.name, select(TrialRow).where(TrialRow.search_id == search.id, TrialRow.baseline.is_not(None))
            )
            if r.state in FINISHED_STATES
        ]
        rivals: dict[int, TrialRecord] = {}
        for b in baselines:
            if b.macs is None:
                continue
            q = (
                _scored(search)
                .where(TrialRow.feasible, TrialRow.baseline.is_(None), TrialRow.macs <= b.macs)
                .order_by(TrialRow.score.desc(), TrialRow.macs, TrialRow.number)
                .limit(1)
            )
            rivals |= {r.trial: r for r in _records(s, search.name, q)}
    return baseline_gains(sorted([*baselines, *rivals.values()], key=lambda r: r.trial))


def result_attrs(db: Database, search: Search) -> dict[str, Any]:
    """The study's re-checks and fine-tunings (one indexed query of its attributes)."""
    return study_attrs(db, search.name, (RECHECK_ATTR, FINETUNE_ATTR))


@dataclass(frozen=True)
class TrialPage:
    rows: list[Row[Any]]  #: every column of ``ss_trials``, by name
    total: int
    next: int | None


def trial_page(
    db: Database, search: Search, limit: int, after: int | None = None, offset: int = 0, state: str | None = None
) -> TrialPage:
    """Trials by number: those after trial ``after`` (keyset: stable while trials are added), else
    from ``offset``. ``next``: the ``after`` of the next page, None on the last. ``total`` comes
    from the search row's counts."""
    q = select(*TrialRow.__table__.c).where(TrialRow.search_id == search.id)
    if state is not None:
        q = q.where(TrialRow.state == state)
    if after is not None:
        q = q.where(TrialRow.number > after)
    else:
        q = q.offset(offset)
    with db.session() as s:
        rows = s.execute(q.order_by(TrialRow.number).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    total = getattr(search, STATE_COUNTS[state]) if state is not None else search.n_trials
    return TrialPage(list(rows), total, rows[-1].number if more and rows else None)


#: An absolute budget of each kind, for :func:`warm_up` (any value gives the same statement).
_SOME_BUDGET = {"flops": "1", "params": "1", "latency": "1ms", "memory": "1B"}


def no_search() -> Search:
    """A search that does not exist (every count 0, a best trial 0): warm-ups' queries about it
    find nothing."""
    return Search(id=uuid.UUID(int=0), name="", trials_requested=0, best_number=0, **dict.fromkeys(COUNTERS, 0))


def warm_up(db: Database) -> None:
    """Run every query of this module once, for a search that does not exist (nothing is found,
    nothing is written), so that a fresh API process compiles its statements -- SQLAlchemy
    caches them per process, a few ms each -- at startup and not on its first requests: at
    concurrency 8 a cold process's first requests took several times the others'."""
    nowhere = no_search()
    etag(nowhere, result_attrs(db, nowhere))
    kinds = list(_SOME_BUDGET)
    for n in range(1, len(kinds) + 1):  # one statement per combination of budgets given
        for given in itertools.combinations(kinds, n):
            try:
                best_within(db, nowhere, {k: _SOME_BUDGET[k] for k in given})
            except StructsearchError:  # "no trained candidates yet": the statements ran
                pass
    with db.session() as s:
        fronts.kept_numbers(s, nowhere.id, "macs")
        s.execute(_numbered(nowhere, [0]))
    gains(db, nowhere)
    for after, state in itertools.product((None, 0), (None, "complete")):
        trial_page(db, nowhere, 1, after, 0, state)
