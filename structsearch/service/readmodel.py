"""The trials read model: ``ss_trials`` and the counts on ``ss_searches``, kept from Optuna's trials.

Optuna's storage is the source of truth -- the sampler reads it -- but reading it is slow (about
4.5 s for a 10,000-trial study), so no request reads it: the API answers from ``ss_trials``
(indexed: best within a budget, fronts, keyset pages, changes for ``/events``) and from the
counts on the search row.

Writers, all through :func:`write_trials` (idempotent: an upsert on ``(search_id, number)`` that
skips rows already equal, so a re-run job or a second backfill changes nothing):

* the worker, after each trial it ran (complete, pruned or failed), and at the start of each job
  for whatever else changed in the study (:meth:`TrialSync.catch_up`: a dead worker's trial
  failed as stale, its retry queued, other workers' running trials);
* the API at submission (the enqueued baselines, warm-start copies);
* ``structsearch db backfill`` for studies written before the read model (or by the CLI).

Each write is one short transaction: the search row is locked (``FOR UPDATE``) so that two
workers finishing trials of one search at once apply their count changes one after the other;
counts move by the difference between each row's old and new contribution (:data:`COUNTERS`),
so a write costs the same at 10 or 100,000 trials. ``structsearch db check`` compares both with
Optuna's trials and reports any drift.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial
from sqlalchemy import Row, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from structsearch.errors import NotFound
from structsearch.search.record import TrialAttrs
from structsearch.search.results import TrialRecord, record_of
from structsearch.service.database import Database
from structsearch.service.tables import TRIAL_SEQ, Search, TrialRow, utcnow

log = logging.getLogger("structsearch.readmodel")

FINISHED_STATES = ("complete", "pruned", "fail")

#: Every counter on ``ss_searches`` and which rows it counts. The one definition of the counts:
#: :func:`write_trials` applies their differences, :func:`recount` sums them from scratch.
COUNTERS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "n_trials": lambda r: True,
    "n_waiting": lambda r: r["state"] == "waiting",
    "n_running": lambda r: r["state"] == "running",
    "n_complete": lambda r: r["state"] == "complete",
    "n_pruned": lambda r: r["state"] == "pruned",
    "n_failed": lambda r: r["state"] == "fail",
    "n_copied": lambda r: r["copied_from"] is not None and r["state"] in FINISHED_STATES,
    "n_own_complete": lambda r: r["copied_from"] is None and r["state"] == "complete",
    "n_trained": lambda r: r["copied_from"] is None and r["state"] == "complete" and r["trained"],
    "n_over_budget": lambda r: r["copied_from"] is None and r["state"] == "complete" and not r["feasible"],
    "n_feasible": lambda r: r["scored"] and r["feasible"],
}
#: Columns a row is compared on (everything but the change sequence).
_COMPARED = [c.name for c in TrialRow.__table__.columns if c.name != "seq"]


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
        "state": r.state,
        "spec_key": a.spec_key,
        "spec": r.spec,
        "macs": r.macs,
        "params": r.params,
        "latency_ms": r.latency_ms,
        "latency_device": r.latency_device,
        "latency_runtime": r.latency_runtime,
        "memory_bytes": r.memory_bytes,
        "memory_device": r.memory_device,
        "resolution": r.resolution,
        "score": r.score,
        "seconds": r.seconds,
        "trained": r.trained,
        "feasible": r.feasible,
        "scored": r.state == "complete" and r.trained and None not in (r.score, r.macs, r.params),
        "baseline": r.baseline,
        "duplicate_of": a.duplicate_of,
        "copied_from": a.copied_from,
        "artifact": a.artifact,
        "started_at": _aware(t.datetime_start),
        "completed_at": _aware(t.datetime_complete),
    }


#: TrialRecord fields taken from a row unchanged (``study`` and ``trial`` are named differently).
_RECORD_FIELDS = [f for f in TrialRecord.model_fields if f not in ("study", "trial")]


def record_from_row(study: str, row: Any) -> TrialRecord:
    """The :class:`TrialRecord` of a stored row (any object or mapping with the row's columns)."""
    get = row.__getitem__ if isinstance(row, Mapping) else lambda k: getattr(row, k)
    return TrialRecord(study=study, trial=get("number"), **{f: get(f) for f in _RECORD_FIELDS})


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return all(old[c] == new[c] for c in _COMPARED)


def _upsert(session: Session, rows: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    if dialect == "postgresql":
        rows = [{**r, "seq": TRIAL_SEQ.next_value()} for r in rows]
    else:  # SQLite (the CLI's embedded default): no sequences; rows of one write share a seq
        last = session.scalar(select(func.max(TrialRow.seq))) or 0
        rows = [{**r, "seq": last + 1} for r in rows]
    stmt = insert(TrialRow).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["search_id", "number"],
        set_={c: stmt.excluded[c] for c in [*_COMPARED, "seq"] if c not in ("search_id", "number")},
    )
    session.execute(stmt)


def _best(session: Session, search_id: uuid.UUID) -> Row[int, float | None] | None:
    """The search's best feasible scored trial (one walk of ``ix_ss_trials_best``)."""
    return session.execute(
        select(TrialRow.number, TrialRow.score)
        .where(TrialRow.search_id == search_id, TrialRow.scored, TrialRow.feasible)
        .order_by(TrialRow.score.desc(), TrialRow.macs, TrialRow.number)
        .limit(1)
    ).first()


def write_trials(session: Session, search_id: uuid.UUID, trials: Iterable[FrozenTrial]) -> int:
    """Upsert the rows of ``trials`` and move the search's counts; returns how many rows changed.

    Runs in the caller's transaction (keep it short: it holds the search row's lock).
    """
    new = {r["number"]: r for r in (row_of(search_id, t) for t in trials)}
    if not new:
        return 0
    locked = session.execute(select(Search.id).where(Search.id == search_id).with_for_update()).first()
    if locked is None:
        return 0  # the search was deleted
    cols = [TrialRow.__table__.c[c] for c in _COMPARED]
    old: dict[int, dict[str, Any]] = {
        r["number"]: dict(r)
        for r in session.execute(
            select(*cols).where(TrialRow.search_id == search_id, TrialRow.number.in_(list(new)))
        ).mappings()
    }
    changed = [r for n, r in new.items() if n not in old or not _same(old[n], r)]
    if not changed:
        return 0
    _upsert(session, changed)
    delta = {name: 0 for name in COUNTERS}
    for r in changed:
        prev = old.get(r["number"])
        for name, counts in COUNTERS.items():
            delta[name] += counts(r) - (counts(prev) if prev is not None else 0)
    values: dict[str, Any] = {name: getattr(Search, name) + d for name, d in delta.items() if d}
    contenders = [r for r in changed if r["scored"] and r["feasible"]]
    contenders += [o for r in changed if (o := old.get(r["number"])) is not None and o["scored"] and o["feasible"]]
    if contenders:
        best = _best(session, search_id)
        values |= {"best_number": best.number if best else None, "best_score": best.score if best else None}
    session.execute(
        update(Search)
        .where(Search.id == search_id)
        .values(**values, trials_changed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return len(changed)


def recount(session: Session, search_id: uuid.UUID) -> dict[str, Any]:
    """The search's counts and best summed from its rows (what the stored counts must equal)."""
    cols = [TrialRow.__table__.c[c] for c in ("state", "copied_from", "trained", "feasible", "scored")]
    rows = [dict(r) for r in session.execute(select(*cols).where(TrialRow.search_id == search_id)).mappings()]
    counts: dict[str, Any] = {name: sum(1 for r in rows if pred(r)) for name, pred in COUNTERS.items()}
    best = _best(session, search_id)
    counts |= {"best_number": best.number if best else None, "best_score": best.score if best else None}
    return counts


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

    def _write(self, trial_ids: Iterable[int]) -> int:
        trials = [self.storage.get_trial(i) for i in trial_ids]
        with self.db.session() as s:
            return write_trials(s, self.search_id, trials)

    def record(self, numbers: Sequence[int]) -> int:
        """Write these trials (by number): what a worker does after the trial it ran."""
        with self.db.engine.connect() as conn:
            ids = [i for (i,) in conn.execute(_TRIAL_IDS_SQL, {"study": self.study_id, "numbers": list(numbers)})]
        return self._write(ids)

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
        return self._write(ids)

    def backfill(self, chunk: int = 1000) -> int:
        """Write every trial (read in one pass), then set the counts from the rows: repairs any
        drift, not only missing rows."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        written = 0
        for start in range(0, len(trials), chunk):
            with self.db.session() as s:
                written += write_trials(s, self.search_id, trials[start : start + chunk])
        with self.db.session() as s:
            counts = recount(s, self.search_id)
            s.execute(update(Search).where(Search.id == self.search_id).values(**counts))
        return written


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
    """:func:`recount` of rows held in memory (Optuna's trials, for :func:`drift`)."""
    rows = list(rows)
    counts: dict[str, Any] = {name: sum(1 for r in rows if pred(r)) for name, pred in COUNTERS.items()}
    good = [r for r in rows if r["scored"] and r["feasible"]]
    best = min(good, key=lambda r: (-r["score"], r["macs"], r["number"]), default=None)
    return counts | {"best_number": best and best["number"], "best_score": best and best["score"]}


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
    where = f"search {search.id} ({search.name})"
    lines = []
    for n in sorted(want.keys() | have.keys()):
        if n not in have:
            lines.append(f"{where}: trial {n} ({want[n]['state']}) is missing from ss_trials")
        elif n not in want:
            lines.append(f"{where}: trial {n} is in ss_trials but not in the study")
        elif differing := [c for c in _COMPARED if have[n][c] != want[n][c]]:
            lines.append(f"{where}: trial {n} differs in {', '.join(differing)}")
    for name, value in _expected_counts(want.values()).items():
        if stored.get(name) != value:
            lines.append(f"{where}: {name} is {stored.get(name)}, the study says {value}")
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
