"""Pareto fronts kept per search and cost axis (``ss_fronts``), moved by the writes of ``ss_trials``.

A front takes a scan of every scored row of a search (about a second at 100,000 trials), too slow
for a request. So the read model's writer keeps each front up to date in the transaction that
writes the rows (:func:`keep`, called by :func:`~structsearch.service.readmodel.write_trials`
under the search row's lock), and ``/pareto`` only reads the kept numbers and their rows.

Keeping one up to date costs a handful of rows, not a scan: the front of (old front + changed
rows) is the front of all rows, as long as no row of the old front itself changed (rows off
the front are dominated by a front row, which stays). A finished trial never changes, so a row
leaves a front only when a repair rewrites it (``db backfill``, a job's catch-up after drift);
then, and when a search has no kept front yet (written before migration 0006, or seeded by
hand), the front is recomputed in SQL (:func:`front_sql`).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from structsearch.search.results import COST_FIELDS, front_sweep
from structsearch.service.tables import FrontRow, TrialRow

_LOCK_SQL = text("SELECT 1 FROM ss_searches WHERE id = :search FOR UPDATE")
#: What a front is computed from: the columns of :data:`COST_FIELDS` and the ordering.
_POINT_COLUMNS = ("number", "score", "scored", "feasible", *COST_FIELDS.values())


def front_sql(search_id: uuid.UUID, cost: str) -> Select[Any]:
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
        .where(TrialRow.search_id == search_id, TrialRow.scored, TrialRow.feasible, axis.is_not(None))
        .subquery()
    )
    return (
        select(pts.c.number)
        .where(pts.c.before.is_(None) | (pts.c.score > pts.c.before))
        .order_by(pts.c.cost, pts.c.score.desc(), pts.c.number)
    )


def front_numbers(rows: Iterable[Mapping[str, Any]], axis: str) -> list[int]:
    """:func:`front_sql` on rows held in memory (mappings with :data:`_POINT_COLUMNS`), in the
    same order with the same ties."""
    pts = sorted((r for r in rows if r["scored"] and r["feasible"] and r[axis] is not None), key=lambda r: r["number"])
    return [r["number"] for r in front_sweep(pts, lambda r: (r[axis], r["score"]))]


def _upsert(session: Session, fronts: list[dict[str, Any]]) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(FrontRow).values(fronts)
    session.execute(
        stmt.on_conflict_do_update(index_elements=["search_id", "cost"], set_={"numbers": stmt.excluded.numbers})
    )


#: The kept fronts of a search (cost -> trial numbers) and the points of the rows on them (by number).
Kept = tuple[dict[str, list[int]], dict[int, dict[str, Any]]]

#: :func:`read_kept` in one PostgreSQL statement (sent by the writer with its others, one round
#: trip): a row per front and trial number on it, in order (a front with none: one row of NULLs).
#: Each row is looked up by its primary key (the LIMIT keeps the planner from hashing all the
#: search's rows instead: it expects 100 numbers per front).
KEPT_SQL = text(f"""
SELECT f.cost, n.number, {", ".join(f"t.{c}" for c in _POINT_COLUMNS)}
FROM ss_fronts f
LEFT JOIN LATERAL jsonb_array_elements_text(f.numbers) WITH ORDINALITY AS n(number, i) ON TRUE
LEFT JOIN LATERAL (
  SELECT {", ".join(_POINT_COLUMNS)} FROM ss_trials
  WHERE search_id = f.search_id AND number = CAST(n.number AS INTEGER) LIMIT 1
) t ON TRUE
WHERE f.search_id = :search ORDER BY f.cost, n.i""")


def kept_of(rows: Iterable[Sequence[Any]]) -> Kept:
    """:data:`KEPT_SQL`'s rows as :data:`Kept`."""
    kept: dict[str, list[int]] = {}
    points: dict[int, dict[str, Any]] = {}
    for cost, number, *point in rows:
        numbers = kept.setdefault(cost, [])
        if number is not None:
            numbers.append(int(number))
        if point[0] is not None:
            points[point[0]] = dict(zip(_POINT_COLUMNS, point, strict=True))
    return kept, points


def read_kept(session: Session, search_id: uuid.UUID) -> Kept:
    kept = {f.cost: f.numbers for f in session.scalars(select(FrontRow).where(FrontRow.search_id == search_id))}
    on_fronts = {n for numbers in kept.values() for n in numbers}
    return kept, {r["number"]: r for r in _points(session, search_id, on_fronts)}


def may_move(changed: Iterable[Mapping[str, Any]]) -> bool:
    """Whether rows written may enter a front (feasible, scored): otherwise only a row that left
    one (a repair) makes :func:`keep` read anything."""
    return any(r["scored"] and r["feasible"] for r in changed)


def keep(
    session: Session,
    search_id: uuid.UUID,
    changed: Sequence[Mapping[str, Any]],
    left: Collection[int],
    kept: Kept | None = None,
) -> None:
    """Bring the search's kept fronts up to date with rows just written, in the writer's
    transaction (which holds the search row's lock, so fronts of one search move one write at a
    time). ``changed``: the rows written, as stored now; ``left``: those of them that were scored
    before this write (they may have been on a front); ``kept``: the fronts and their points, when
    the writer read them already (:data:`KEPT_SQL`). Costs nothing when no changed row can be
    on a front (a running trial, an over-budget or failed one)."""
    entering = [r for r in changed if r["scored"] and r["feasible"]]
    if not entering and not left:
        return
    fronts, points = kept if kept is not None else read_kept(session, search_id)
    moved = []
    for cost, axis in COST_FIELDS.items():
        old = fronts.get(cost)
        if old is None or not set(old).isdisjoint(left):
            numbers = list(session.scalars(front_sql(search_id, cost)))
        else:
            numbers = front_numbers([*(points[n] for n in old if n in points), *entering], axis)
        if numbers != old:
            moved.append({"search_id": search_id, "cost": cost, "numbers": numbers})
    if moved:
        _upsert(session, moved)


def _points(session: Session, search_id: uuid.UUID, numbers: Collection[int]) -> list[dict[str, Any]]:
    if not numbers:
        return []
    cols = [TrialRow.__table__.c[c] for c in _POINT_COLUMNS]
    q = select(*cols).where(TrialRow.search_id == search_id, TrialRow.number.in_(list(numbers)))
    return [dict(r) for r in session.execute(q).mappings()]


def recompute(session: Session, search_id: uuid.UUID, only_missing: bool = False) -> None:
    """Compute the search's fronts from its rows in SQL and keep them (``db backfill``; with
    ``only_missing``, a search read before any front was kept). Takes the search row's lock, as a
    writer does, so it never races one; the fronts another process kept meanwhile are left alone."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_LOCK_SQL, {"search": search_id})
    costs = set(COST_FIELDS)
    if only_missing:
        costs -= set(session.scalars(select(FrontRow.cost).where(FrontRow.search_id == search_id)))
    if costs:
        numbers = {cost: list(session.scalars(front_sql(search_id, cost))) for cost in sorted(costs)}
        _upsert(session, [{"search_id": search_id, "cost": c, "numbers": n} for c, n in numbers.items()])


def kept_numbers(session: Session, search_id: uuid.UUID, cost: str) -> list[int] | None:
    """The kept front's trial numbers, cheapest first; None when the search has none kept."""
    return session.scalar(select(FrontRow.numbers).where(FrontRow.search_id == search_id, FrontRow.cost == cost))
