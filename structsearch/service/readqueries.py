"""The API's answers from the read model (``ss_trials``): best within budgets, fronts, trial pages.

Each is a query or two on indexes of ``ss_trials`` (see :class:`~structsearch.service.tables.TrialRow`),
never a read of Optuna's trials. They give what :mod:`structsearch.search.results` gives from the
trials themselves -- same candidate, same ordering, same ties (highest score, then fewest MACs,
then lowest trial number) -- which the tests check against the library; where the library's own
code can be reused on a handful of rows (baseline gains, the nearest candidate of a failed
``best``), it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from sqlalchemy import Select, and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from structsearch.search.recheck import RECHECK_ATTR
from structsearch.search.results import (
    BUDGETS,
    COST_FIELDS,
    BaselineGain,
    TrialRecord,
    baseline_gains,
    best_under_budget,
    budget_limit,
)
from structsearch.service.database import Database
from structsearch.service.readmodel import FINISHED_STATES, record_from_row, study_attrs
from structsearch.service.tables import FrontRow, Search, TrialRow

#: Study attributes the API shows or needs: teacher figures (percentage budgets), re-checks, fine-tunings.
FINETUNE_ATTR = "finetune"
TEACHER_ATTRS = tuple(attr for attr, _, _ in BUDGETS.values())
#: Trial states -> the search-row counter holding how many trials are in it.
STATE_COUNTS = {
    "waiting": "n_waiting",
    "running": "n_running",
    "complete": "n_complete",
    "pruned": "n_pruned",
    "fail": "n_failed",
}


def etag(search: Search, *extra: Any) -> str:
    """A weak ETag of what a search's results are made of: its trial count and last trial change
    (moved by every read-model write), plus anything else the answer shows (study attributes)."""
    changed = search.trials_changed_at.isoformat() if search.trials_changed_at else "-"
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:12]
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


#: Past this many changed rows a kept front is recomputed rather than brought up to date.
FOLD_LIMIT = 5000


def pareto(db: Database, search: Search, cost: str) -> list[TrialRecord]:
    """``pareto_front(records, cost)`` from the read model, kept in ``ss_fronts`` per search and axis.

    A kept front is brought up to date by folding in only the rows changed since it was kept:
    the front of (old front + changed rows) is the front of all rows, as long as no row of the old
    front changed (then, or after :data:`FOLD_LIMIT` changes, it is recomputed in SQL). Rows are
    written under their search's lock, so their ``seq`` grows in commit order and none is missed.
    """
    with db.session() as s:
        kept = s.get(FrontRow, (search.id, cost))
        numbers, seq = (kept.numbers, kept.seq) if kept is not None else ([], None)
        if seq is not None:
            changed = s.scalars(
                select(TrialRow).where(TrialRow.search_id == search.id, TrialRow.seq > seq).limit(FOLD_LIMIT + 1)
            ).all()
            if len(changed) > FOLD_LIMIT or not set(numbers).isdisjoint(r.number for r in changed):
                seq = None  # recompute
            elif changed:
                rows = [*_rows_numbered(s, search, numbers), *changed]
                numbers, seq = _front_numbers(rows, COST_FIELDS[cost]), max(r.seq for r in changed)
        if seq is None:
            seq = s.scalar(select(func.max(TrialRow.seq)).where(TrialRow.search_id == search.id)) or 0
            numbers = list(s.scalars(_front_sql(search, cost)))  # rows changed meanwhile are folded in next time
        front = [record_from_row(search.name, r) for r in _rows_numbered(s, search, numbers)]
        if kept is None or seq != kept.seq:
            _keep(db, FrontRow(search_id=search.id, cost=cost, seq=seq, numbers=numbers))
    return front


def _front_sql(search: Search, cost: str) -> Select[tuple[int]]:
    """The front's trial numbers in one query: the feasible scored rows by (cost, score down,
    number), kept where the score beats every cheaper row's (a window maximum)."""
    axis = getattr(TrialRow, COST_FIELDS[cost])
    order = (axis, TrialRow.score.desc(), TrialRow.number)
    pts = (
        select(
            TrialRow.number,
            TrialRow.score,
            axis.label("cost"),
            func.max(TrialRow.score)
            .over(order_by=order, rows=(None, -1))  # the best score strictly before this row
            .label("before"),
        )
        .where(TrialRow.search_id == search.id, TrialRow.scored, TrialRow.feasible, axis.is_not(None))
        .subquery()
    )
    return (
        select(pts.c.number)
        .where(pts.c.before.is_(None) | (pts.c.score > pts.c.before))
        .order_by(pts.c.cost, pts.c.score.desc(), pts.c.number)
    )


def _front_numbers(rows: Sequence[TrialRow], axis: str) -> list[int]:
    """:func:`_front_sql` on rows held in memory, in the same order with the same ties."""
    pts = sorted(
        (r for r in rows if r.scored and r.feasible and getattr(r, axis) is not None),
        key=lambda r: (getattr(r, axis), -(r.score or 0.0), r.number),
    )
    numbers: list[int] = []
    best: float | None = None
    for r in pts:
        if best is None or (r.score or 0.0) > best:
            numbers.append(r.number)
            best = r.score
    return numbers


def _rows_numbered(s: Session, search: Search, numbers: Sequence[int]) -> list[TrialRow]:
    """The rows of these trial numbers, in that order (by the primary key)."""
    found = {
        r.number: r
        for r in s.scalars(select(TrialRow).where(TrialRow.search_id == search.id, TrialRow.number.in_(numbers)))
    }
    return [found[n] for n in numbers if n in found]


def _keep(db: Database, front: FrontRow) -> None:
    """Store a front for the next reader; a race with another reader keeps either (both correct)."""
    try:
        with db.session() as s:
            s.merge(front)
    except IntegrityError:
        pass  # another process inserted it first: its front is as good


def gains(db: Database, search: Search) -> list[BaselineGain]:
    """``baseline_gains`` of the search from its baselines and, for each, its best cheaper searched
    rival (one indexed query each): the library's answer on those rows is its answer on all rows."""
    with db.session() as s:
        baselines = _records(
            s,
            search.name,
            select(TrialRow).where(
                TrialRow.search_id == search.id,
                TrialRow.baseline.is_not(None),
                TrialRow.state.in_(FINISHED_STATES),  # as the library sees them: finished trials
            ),
        )
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
    rows: list[TrialRow]
    total: int
    next: int | None


def trial_page(
    db: Database, search: Search, limit: int, after: int | None = None, offset: int = 0, state: str | None = None
) -> TrialPage:
    """Trials by number: those after trial ``after`` (keyset: stable while trials are added), else
    from ``offset``. ``next``: the ``after`` of the next page, None on the last. ``total`` comes
    from the search row's counts."""
    q = select(TrialRow).where(TrialRow.search_id == search.id)
    if state is not None:
        q = q.where(TrialRow.state == state)
    if after is not None:
        q = q.where(TrialRow.number > after)
    else:
        q = q.offset(offset)
    with db.session() as s:
        rows: Sequence[TrialRow] = s.scalars(q.order_by(TrialRow.number).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    total = getattr(search, STATE_COUNTS[state]) if state is not None else search.n_trials
    return TrialPage(list(rows), total, rows[-1].number if more and rows else None)
