"""The trials read model: ``ss_trials`` and the counts on ``ss_searches``, kept from Optuna's trials.

Optuna's storage is the source of truth -- the sampler reads it -- but reading it is slow (about
4.5 s for a 10,000-trial study), so no request reads it: the API answers from ``ss_trials``
(indexed: best within a budget, fronts, keyset pages, changes for ``/events``) and from the
counts on the search row.

Writers, all through :func:`write_trials` (idempotent: an upsert on ``(search_id, number)`` that
skips rows already equal, so a re-run job or a second backfill changes nothing):

* the worker, as each trial it runs starts (a running row, so ``/trials?state=running`` and
  ``/events`` show it at once) and after it ends (complete, pruned or failed; from the trials its
  ``optuna.Trial`` and Optuna's callbacks hand it, not read again), and at the start of each job
  for whatever else changed in the study (:meth:`TrialSync.catch_up`: a dead worker's trial
  failed as stale, its retry queued, other workers' trials);
* the API at submission (the enqueued baselines, warm-start copies);
* ``structsearch db backfill`` for studies written before the read model (or by the CLI).

Each write is one short transaction on PostgreSQL: the search row is locked (``FOR UPDATE``) so
that two workers finishing trials of one search at once apply their count changes one after the
other, then one statement upserts the rows and moves the counts by the difference between each
changed row's old and new contribution (:data:`COUNTERS`), then (a row that may enter a front)
the kept fronts are read; the three are sent in one round trip, and the commit is the other. A
write costs the same at 10 or 100,000 trials (``bench/api_load.py``). A row never moves
back a stage (waiting, running, finished). ``structsearch db check`` compares both with
Optuna's trials and reports any drift.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import optuna
import psycopg
from optuna.trial import FrozenTrial
from sqlalchemy import Row, TextClause, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

from structsearch.errors import NotFound
from structsearch.search.record import TrialAttrs
from structsearch.search.results import COST_FIELDS, TrialRecord, record_of
from structsearch.service import fronts
from structsearch.service.database import Database
from structsearch.service.tables import Search, TrialRow, utcnow

log = logging.getLogger("structsearch.readmodel")

FINISHED_STATES = ("complete", "pruned", "fail")


@dataclass(frozen=True)
class Count:
    """Which trial rows a counter on ``ss_searches`` counts: those meeting every condition given.

    One definition read two ways: in Python over a row (:func:`recount`, :func:`drift`) and as
    SQL over a row's columns (:func:`write_trials` moves the counts inside the database).
    """

    states: tuple[str, ...] = ()  #: the row's state is one of these (empty: any state)
    copied: bool | None = None  #: a warm-start copy (``copied_from`` set) or an own trial
    trained: bool | None = None
    feasible: bool | None = None
    scored: bool | None = None

    def _flags(self) -> list[tuple[str, bool]]:
        return [(c, v) for c in ("trained", "feasible", "scored") if (v := getattr(self, c)) is not None]

    def __call__(self, r: Mapping[str, Any]) -> bool:
        return (
            (not self.states or r["state"] in self.states)
            and (self.copied is None or (r["copied_from"] is not None) == self.copied)
            and all(bool(r[c]) == v for c, v in self._flags())
        )

    def sql(self) -> str:
        """The condition over a row's (unqualified) columns."""
        terms = ["TRUE"]
        if self.states:
            terms.append(f"state IN ({', '.join(repr(s) for s in self.states)})")
        if self.copied is not None:
            terms.append(f"copied_from IS {'NOT ' if self.copied else ''}NULL")
        terms += [f"{'' if v else 'NOT '}{c}" for c, v in self._flags()]
        return " AND ".join(terms)


#: Every counter on ``ss_searches`` and which rows it counts. The one definition of the counts:
#: :func:`write_trials` applies their differences, :func:`recount` sums them from scratch.
COUNTERS: dict[str, Count] = {
    "n_trials": Count(),
    "n_waiting": Count(states=("waiting",)),
    "n_running": Count(states=("running",)),
    "n_complete": Count(states=("complete",)),
    "n_pruned": Count(states=("pruned",)),
    "n_failed": Count(states=("fail",)),
    "n_copied": Count(states=FINISHED_STATES, copied=True),
    "n_own_complete": Count(states=("complete",), copied=False),
    "n_trained": Count(states=("complete",), copied=False, trained=True),
    "n_over_budget": Count(states=("complete",), copied=False, feasible=False),
    "n_feasible": Count(scored=True, feasible=True),
}
#: Trial states -> the search-row counter holding how many trials are in it (the counters of one state alone).
STATE_COUNTS = {c.states[0]: name for name, c in COUNTERS.items() if len(c.states) == 1 and c == Count(c.states)}
#: Columns a row is compared on (everything but the change sequence).
_COMPARED = [c.name for c in TrialRow.__table__.columns if c.name != "seq"]


#: TrialRecord fields a row holds as they are (``study`` and ``trial`` are named differently).
RECORD_FIELDS = [f for f in TrialRecord.model_fields if f not in ("study", "trial")]


def _aware(when: datetime | None) -> datetime | None:
    """Optuna hands out naive local times; stored with their zone."""
    return None if when is None else when.astimezone()


def row_of(search_id: uuid.UUID, t: FrozenTrial) -> dict[str, Any]:
    """The ``ss_trials`` row of one Optuna trial of the search: its record (:func:`record_of`, so
    feasibility and baselines mean what they mean to the CLI) plus what the API lists besides."""
    a = TrialAttrs.read(t)
    r = record_of("", t)
    return {
        "search_id": search_id,
        "number": t.number,
        "trial_id": t._trial_id,
        **{f: getattr(r, f) for f in RECORD_FIELDS},
        "spec_key": a.spec_key,
        "scored": r.state == "complete" and r.trained and None not in (r.score, r.macs, r.params),
        "artifact": a.artifact,
        "started_at": _aware(t.datetime_start),
        "completed_at": _aware(t.datetime_complete),
    }


def running_trial(trial: optuna.Trial) -> FrozenTrial:
    """A trial that just started, as Optuna stores it: the copy its :class:`optuna.Trial` read as
    the trial began (Optuna keeps it there, private, for its samplers), so the running row is
    written without reading the trial again. Not changed here; write it before the trial's
    objective sets attributes on it."""
    return trial._cached_frozen_trial


def record_from_row(study: str, row: Any) -> TrialRecord:
    """The :class:`TrialRecord` of a stored row (any object or mapping with the row's columns)."""
    get = row.__getitem__ if isinstance(row, Mapping) else lambda k: getattr(row, k)
    return TrialRecord(study=study, trial=get("number"), **{f: get(f) for f in RECORD_FIELDS})


#: A trial goes waiting -> running -> finished, and a finished one never changes again (Optuna
#: refuses it). A row is never moved back: a writer that read a trial just before another wrote
#: its next state (a job's catch-up racing the trial's own worker) leaves the newer row alone.
_STAGE = {"waiting": 0, "running": 1}
_STAGE_SQL = "CASE {} WHEN 'waiting' THEN 0 WHEN 'running' THEN 1 ELSE 2 END"


def _stage(state: str) -> int:
    return _STAGE.get(state, 2)


def _replaces(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether ``new`` is written over ``old``: it differs and is not an earlier stage."""
    if old is None:
        return True
    return _stage(new["state"]) >= _stage(old["state"]) and any(old[c] != new[c] for c in _COMPARED)


def _upsert_sqlite(session: Session, rows: list[dict[str, Any]]) -> None:
    # no sequences in SQLite: the rows of one write share a seq
    last = session.scalar(select(func.max(TrialRow.seq))) or 0
    stmt = sqlite.insert(TrialRow).values([{**r, "seq": last + 1} for r in rows])
    stmt = stmt.on_conflict_do_update(index_elements=["search_id", "number"], set_={c: stmt.excluded[c] for c in _SET})
    session.execute(stmt)


def _best(session: Session, search_id: uuid.UUID) -> Row[int, float | None] | None:
    """The search's best feasible scored trial (one walk of ``ix_ss_trials_best``)."""
    return session.execute(
        select(TrialRow.number, TrialRow.score)
        .where(TrialRow.search_id == search_id, TrialRow.scored, TrialRow.feasible)
        .order_by(TrialRow.score.desc(), TrialRow.macs, TrialRow.number)
        .limit(1)
    ).first()


#: Columns an upsert sets (the key apart) and, on PostgreSQL, the arrays a write sends them in.
_SET = [c for c in _COMPARED if c not in ("search_id", "number")] + ["seq"]
_SENT = [c for c in _COMPARED if c != "search_id"]
_LOCK_SQL = text("SELECT 1 FROM ss_searches WHERE id = :search FOR UPDATE")


@cache
def _write_sql() -> TextClause:
    """The PostgreSQL write after the lock, one statement: the rows arrive as one array per
    column; the old rows are read, the changed ones upserted (``IS DISTINCT FROM``: an equal row
    is left alone, its ``seq`` too; so is a row at a later stage, :func:`_replaces`), and the search's counts move by the changed rows' new minus
    old contributions (:data:`COUNTERS` as SQL), its best by :func:`_best`'s order over the rows
    left alone and the changed ones. Returns the numbers of the rows changed and of those among
    them that were scored before (they may leave a front); no row when nothing changed."""
    pg = postgresql.dialect()
    table = TrialRow.__table__
    sent = ", ".join(_SENT)
    arrays = ", ".join(f"CAST(:{c} AS {table.c[c].type.compile(dialect=pg)}[])" for c in _SENT)
    kept = [c for c in _COMPARED if c != "search_id"]
    deltas = ", ".join(f"coalesce(sum(sign) FILTER (WHERE {n.sql()}), 0) AS {name}" for name, n in COUNTERS.items())
    moves = ", ".join(f"{name} = s.{name} + d.{name}" for name in COUNTERS)
    order = "score DESC, macs, number"
    return text(f"""
WITH new ({sent}) AS (SELECT * FROM unnest({arrays}) WHERE EXISTS (SELECT FROM ss_searches WHERE id = :search)),
old AS (SELECT o.* FROM ss_trials o JOIN new USING (number) WHERE o.search_id = :search),
up AS (
  INSERT INTO ss_trials AS t (search_id, {sent}, seq)
  SELECT :search, {sent}, nextval('ss_trials_seq') FROM new
  ON CONFLICT (search_id, number) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _SET)}
  WHERE ({", ".join(f"t.{c}" for c in kept)}) IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in kept)})
    AND {_STAGE_SQL.format("EXCLUDED.state")} >= {_STAGE_SQL.format("t.state")}
  RETURNING t.*
),
moved AS (SELECT 1 AS sign, * FROM up UNION ALL SELECT -1, * FROM old WHERE number IN (SELECT number FROM up)),
d AS (SELECT {deltas} FROM moved),
best AS (
  SELECT number, score FROM (
    (SELECT number, score, macs FROM ss_trials WHERE search_id = :search AND scored AND feasible
       AND number NOT IN (SELECT number FROM up) ORDER BY {order} LIMIT 1)
    UNION ALL SELECT number, score, macs FROM up WHERE scored AND feasible
  ) c ORDER BY {order} LIMIT 1
)
UPDATE ss_searches s SET {moves},
  best_number = (SELECT number FROM best), best_score = (SELECT score FROM best), trials_changed_at = :now
FROM d WHERE s.id = :search AND EXISTS (SELECT FROM up)
RETURNING (SELECT array_agg(number) FROM up),
  (SELECT coalesce(array_agg(number), '{{}}') FROM old WHERE scored AND number IN (SELECT number FROM up))""")


#: What a write changed: the numbers of the rows written, and of those that were scored before.
Changed = tuple[list[int], list[int]]


@cache
def _write_sql_psycopg() -> tuple[str, str, str]:
    """The lock, :func:`_write_sql` and :data:`fronts.KEPT_SQL` as psycopg runs them (``%(name)s``)."""
    lock, write, kept = (str(q.compile(dialect=psycopg_dialect())) for q in (_LOCK_SQL, _write_sql(), fronts.KEPT_SQL))
    return lock, write, kept


def _write_postgres(
    session: Session, search_id: uuid.UUID, rows: list[dict[str, Any]]
) -> tuple[Changed, fronts.Kept | None]:
    """Lock the search row (two workers' writes to one search apply their count changes one
    after the other, each reading the old rows after the other's commit), then
    :func:`_write_sql`, then, when a row may enter a front, read the kept fronts: three
    statements run one after the other as ever, sent together in one round trip (psycopg's
    pipeline; with the transaction's BEGIN, four round trips became one)."""
    arrays: dict[str, Any] = {c: [r[c] for r in rows] for c in _SENT}
    arrays["spec"] = [None if v is None else json.dumps(v) for v in arrays["spec"]]
    lock_sql, write_sql, kept_sql = _write_sql_psycopg()
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)  # the service's engines are postgresql+psycopg
    with conn.pipeline():
        lock = conn.execute(lock_sql, {"search": search_id})
        done = conn.execute(write_sql, {**arrays, "search": search_id, "now": utcnow()})
        kept = conn.execute(kept_sql, {"search": search_id}) if fronts.may_move(rows) else None
    if lock.fetchone() is None:
        return ([], []), None  # the search was deleted: the write found no search row and wrote nothing
    changed = done.fetchone()
    front = fronts.kept_of(kept.fetchall()) if kept is not None else None
    return ((list(changed[0]), list(changed[1])) if changed is not None else ([], [])), front


def _write_portable(session: Session, search_id: uuid.UUID, new: dict[int, dict[str, Any]]) -> Changed:
    """What :func:`_write_postgres` does, step by step in Python (SQLite: writers are serialised
    by the database's own lock)."""
    if session.scalar(select(Search.id).where(Search.id == search_id)) is None:
        return [], []  # the search was deleted
    cols = [TrialRow.__table__.c[c] for c in _COMPARED]
    old: dict[int, dict[str, Any]] = {
        r["number"]: dict(r)
        for r in session.execute(
            select(*cols).where(TrialRow.search_id == search_id, TrialRow.number.in_(list(new)))
        ).mappings()
    }
    changed = [r for n, r in new.items() if _replaces(old.get(n), r)]
    if not changed:
        return [], []
    _upsert_sqlite(session, changed)
    delta = {name: 0 for name in COUNTERS}
    for r in changed:
        prev = old.get(r["number"])
        for name, counts in COUNTERS.items():
            delta[name] += counts(r) - (counts(prev) if prev is not None else 0)
    values: dict[str, Any] = {name: getattr(Search, name) + d for name, d in delta.items() if d}
    best = _best(session, search_id)
    values |= {"best_number": best.number if best else None, "best_score": best.score if best else None}
    session.execute(
        update(Search)
        .where(Search.id == search_id)
        .values(**values, trials_changed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return [r["number"] for r in changed], [r["number"] for r in changed if (o := old.get(r["number"])) and o["scored"]]


def write_trials(session: Session, search_id: uuid.UUID, trials: Iterable[FrozenTrial]) -> int:
    """Upsert the rows of ``trials``, move the search's counts and its kept fronts
    (:func:`fronts.keep`); returns how many rows changed.

    Runs in the caller's transaction (keep it short: it holds the search row's lock).
    """
    new = {r["number"]: r for r in (row_of(search_id, t) for t in trials)}
    if not new:
        return 0
    kept = None
    if session.get_bind().dialect.name == "postgresql":
        (changed, left), kept = _write_postgres(session, search_id, list(new.values()))
    else:
        changed, left = _write_portable(session, search_id, new)
    fronts.keep(session, search_id, [new[n] for n in changed], left, kept)
    return len(changed)


def recount(session: Session, search_id: uuid.UUID) -> dict[str, Any]:
    """The search's counts and best summed from its rows (what the stored counts must equal)."""
    names = ("number", "state", "copied_from", "trained", "feasible", "scored", "score", "macs")
    cols = [TrialRow.__table__.c[c] for c in names]
    rows = session.execute(select(*cols).where(TrialRow.search_id == search_id)).mappings()
    return _expected_counts(dict(r) for r in rows)


# -- keeping it in step with Optuna ------------------------------------------------------------

#: Optuna trials of a study whose row is missing or in another state (state: Optuna's enum name).
_DRIFTED_SQL = text(
    "SELECT t.trial_id FROM trials t LEFT JOIN ss_trials r ON r.search_id = :search AND r.number = t.number "
    "WHERE t.study_id = :study AND (r.number IS NULL OR r.state <> lower(CAST(t.state AS TEXT)))"
)
_TRIAL_IDS_SQL = text("SELECT trial_id FROM trials WHERE study_id = :study AND number IN :numbers").bindparams(
    bindparam("numbers", expanding=True)
)
_ATTRS_SQL = text(
    "SELECT a.key, a.value_json FROM study_user_attributes a JOIN studies s ON s.study_id = a.study_id "
    "WHERE s.study_name = :name AND a.key IN :keys"
).bindparams(bindparam("keys", expanding=True))


class TrialSync:
    """Writes a search's trials from Optuna's storage into the read model (a worker, the API's
    submission, ``db backfill``). Each write is its own short transaction."""

    def __init__(self, db: Database, storage: Any, search_id: uuid.UUID, study_id: int) -> None:
        self.db, self.storage, self.search_id, self.study_id = db, storage, search_id, study_id

    def write(self, trials: Sequence[FrozenTrial]) -> int:
        """Write these trials as the caller holds them: what a worker does as its trial starts
        (:func:`running_trial`) and after it finished (the trial Optuna handed its callbacks)."""
        with self.db.session() as s:
            return write_trials(s, self.search_id, trials)

    def _write_ids(self, trial_ids: Iterable[int]) -> int:
        return self.write([self.storage.get_trial(i) for i in trial_ids])

    def record(self, numbers: Sequence[int]) -> int:
        """Write these trials (by number), read from Optuna: a worker's trial that ended in an
        exception (Optuna's callbacks do not see it)."""
        with self.db.engine.connect() as conn:
            ids = [i for (i,) in conn.execute(_TRIAL_IDS_SQL, {"study": self.study_id, "numbers": list(numbers)})]
        return self._write_ids(ids)

    def safely(self, write: Callable[..., int], *args: Any) -> float:
        """Run a write for a worker; never raises, because a read-model failure must not fail a
        trial (``db check`` reports it, the next job's :meth:`catch_up` repairs it). Returns the
        seconds it took."""
        t = time.perf_counter()
        try:
            write(*args)
        except Exception:  # see the docstring
            log.warning("search %s: could not update the read model", self.search_id, exc_info=True)
        return time.perf_counter() - t

    def catch_up(self) -> int:
        """Write every trial whose row is missing or stale in its state (one anti-join on the
        trials' numbers and states; the rows that differ are read from Optuna one by one)."""
        with self.db.engine.connect() as conn:
            ids = [i for (i,) in conn.execute(_DRIFTED_SQL, {"search": self.search_id, "study": self.study_id})]
        return self._write_ids(ids)

    def backfill(self, chunk: int = 1000) -> int:
        """Write every trial (read in one pass), then set the counts and the fronts from the rows:
        repairs any drift, not only missing rows."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        written = 0
        for start in range(0, len(trials), chunk):
            with self.db.session() as s:
                written += write_trials(s, self.search_id, trials[start : start + chunk])
        with self.db.session() as s:
            refresh_search(s, self.search_id)
        return written


def refresh_search(session: Session, search_id: uuid.UUID) -> None:
    """A search's counts, best and kept fronts recomputed from its rows (after a backfill, or rows
    loaded in bulk)."""
    session.execute(update(Search).where(Search.id == search_id).values(**recount(session, search_id)))
    fronts.recompute(session, search_id)


def study_id_of(db: Database, study_name: str) -> int | None:
    """Optuna's id of a study, None when absent (one indexed lookup, no Optuna storage opened)."""
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": study_name}).scalar()


def study_attrs(db: Database, study_name: str, keys: Sequence[str]) -> dict[str, Any]:
    """Some user attributes of a study (teacher figures, re-checks, fine-tunings): one indexed
    query on Optuna's ``study_user_attributes``, not a study load."""
    with db.engine.connect() as conn:
        return {k: json.loads(v) for k, v in conn.execute(_ATTRS_SQL, {"name": study_name, "keys": list(keys)})}


def _expected_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The counts and best of these rows: the stored ones (:func:`recount`) or Optuna's trials (:func:`drift`)."""
    rows = list(rows)
    counts: dict[str, Any] = {name: sum(1 for r in rows if pred(r)) for name, pred in COUNTERS.items()}
    good = [r for r in rows if r["scored"] and r["feasible"]]
    best = min(good, key=lambda r: (-r["score"], r["macs"], r["number"]), default=None)
    return counts | {"best_number": best and best["number"], "best_score": best and best["score"]}


def _checked(trial: Mapping[str, Any]) -> Sequence[str]:
    """The columns a row is checked on: a running trial's only on its state (its attributes
    change until it finishes, and its row is written then)."""
    return ("state",) if trial["state"] == "running" else _COMPARED


def drift(db: Database, storage: Any, search: Search) -> list[str]:
    """How the read model of ``search`` differs from Optuna's trials: one line per difference
    (missing, extra or differing rows, naming the columns; counts), empty when it agrees."""
    study_id = study_id_of(db, search.name)
    trials = storage.get_all_trials(study_id, deepcopy=False) if study_id is not None else []
    want = {t.number: row_of(search.id, t) for t in trials}
    cols = [TrialRow.__table__.c[c] for c in _COMPARED]
    with db.session() as s:
        have = {
            r["number"]: dict(r) for r in s.execute(select(*cols).where(TrialRow.search_id == search.id)).mappings()
        }
        row = s.get(Search, search.id)
        stored = {name: getattr(row, name) for name in _expected_counts([])} if row is not None else {}
        kept = {cost: fronts.kept_numbers(s, search.id, cost) for cost in COST_FIELDS}
    where = f"search {search.id} ({search.name})"
    lines = []
    for n in sorted(want.keys() | have.keys()):
        if n not in have:
            lines.append(f"{where}: trial {n} ({want[n]['state']}) is missing from ss_trials")
        elif n not in want:
            lines.append(f"{where}: trial {n} is in ss_trials but not in the study")
        elif differing := [c for c in _checked(want[n]) if have[n][c] != want[n][c]]:
            lines.append(f"{where}: trial {n} differs in {', '.join(differing)}")
    for name, value in _expected_counts(want.values()).items():
        if stored.get(name) != value:
            lines.append(f"{where}: {name} is {stored.get(name)}, the study says {value}")
    for cost, axis in COST_FIELDS.items():  # a search with no kept front yet has its front computed on first read
        if kept[cost] is not None and kept[cost] != (front := fronts.front_numbers(want.values(), axis)):
            lines.append(f"{where}: the kept {cost} front is trials {kept[cost]}, the study's is {front}")
    return lines


def chosen_searches(db: Database, search: str | None = None) -> list[Search]:
    """Every search, oldest first, or the one with id ``search`` (:class:`NotFound` otherwise)."""
    with db.session() as s:
        if search is None:
            return list(s.scalars(select(Search).order_by(Search.created_at, Search.id)))
        try:
            row = s.get(Search, uuid.UUID(search))
        except ValueError:
            row = None
    if row is None:
        raise NotFound(f"no search with id '{search}'")
    return [row]


def backfill(db: Database, storage: Any, searches: Iterable[Search]) -> Iterator[tuple[Search, int | None]]:
    """Fill the read model of each search from Optuna's storage; yields (search, rows written),
    None for a search without a study (its submission failed before creating it)."""
    for row in searches:
        study_id = study_id_of(db, row.name)
        yield row, None if study_id is None else TrialSync(db, storage, row.id, study_id).backfill()
