"""Reading Optuna studies for the API: trial counts, records, fronts -- cached per study.

``study.get_trials()`` deserialises every trial with all its attributes; at 10,000 trials that
takes seconds per request (``bench/api_load.py``). But a *finished* trial (complete, pruned, failed) never changes
again -- Optuna refuses updates to finished trials -- and trials are never deleted. So the
finished trials of a study are fully described by how many there are of each finished state:
:class:`StudyReader` keeps them in memory keyed on those counts, which one ``GROUP BY`` query
returns, and only re-reads a study when the counts moved. Running and waiting trials (few, and
still changing) are read fresh each time they are needed.

The count query reads Optuna's ``studies``/``trials`` tables directly (two columns that have been
stable since Optuna 1.x); everything else goes through Optuna's API.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text

from structsearch.search.results import (
    BaselineGain,
    ScoredRecord,
    TrialRecord,
    baseline_gains,
    pareto_front,
    record_of,
    scored,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
LIVE = (TrialState.RUNNING, TrialState.WAITING)
#: Up to this many newly finished trials are fetched one by one; more, and the study is re-read.
_INCREMENTAL_MAX = 200

_COUNTS_SQL = text(
    "SELECT t.state, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "WHERE s.study_name = :name GROUP BY t.state"
)
_FINISHED_IDS_SQL = text(
    "SELECT trial_id FROM trials WHERE study_id = :sid AND state IN ('COMPLETE', 'PRUNED', 'FAIL')"
)


@dataclass(frozen=True)
class FinishedSummary:
    """What a search's progress needs from its finished trials (warm-start copies apart)."""

    complete: int
    trained: int
    over_budget: int
    copied: int
    best: TrialRecord | None


@dataclass(frozen=True)
class FinishedTrials:
    """The finished trials of a study, as Optuna trials and as records, in trial-number order.

    Immutable, so what is derived from it (fronts, scored records, the summary) is computed once
    per entry and shared by every request until the study's finished trials change.
    """

    key: tuple[int, ...]
    trials: list[FrozenTrial]
    records: list[TrialRecord]
    by_number: dict[int, FrozenTrial] = field(repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def front(self, cost: str) -> list[ScoredRecord]:
        """:func:`pareto_front` of these records."""
        return self._once(f"front:{cost}", lambda: pareto_front(self.records, cost))

    def gains(self) -> list[BaselineGain]:
        """:func:`baseline_gains` of these records."""
        return self._once("gains", lambda: baseline_gains(self.records))

    def scored(self) -> list[ScoredRecord]:
        """Complete, trained trials with a score (all that ``best_under_budget`` looks at)."""
        return self._once("scored", lambda: scored(self.records))

    def summary(self) -> FinishedSummary:
        def make() -> FinishedSummary:
            own = [r for r in self.records if r.copied_from is None and r.state == "complete"]
            good = [r for r in self.scored() if r.feasible]
            return FinishedSummary(
                complete=len(own),
                trained=sum(r.trained for r in own),
                over_budget=sum(not r.feasible for r in own),
                copied=sum(r.copied_from is not None for r in self.records),
                best=max(good, key=lambda r: (r.score, -r.macs)) if good else None,
            )

        return self._once("summary", make)


class StudyReader:
    """Thread-safe read access to the studies in one database (one instance per API process)."""

    def __init__(self, url: str, cache_size: int = 64) -> None:
        self.url = url
        self.cache_size = cache_size
        self._storage: optuna.storages.RDBStorage | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, FinishedTrials] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._ids: dict[str, int] = {}

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        """Opened on first use, without creating tables (``structsearch db upgrade`` does that)."""
        with self._lock:
            if self._storage is None:
                self._storage = optuna.storages.RDBStorage(self.url, skip_table_creation=True)
            return self._storage

    def close(self) -> None:
        with self._lock:
            if self._storage is not None:
                self._storage.engine.dispose()
                self._storage = None

    def state_counts(self, name: str) -> dict[TrialState, int]:
        """Trials per state; empty when the study does not exist (yet)."""
        with self.storage.engine.connect() as conn:
            rows = conn.execute(_COUNTS_SQL, {"name": name}).all()
        return {TrialState[str(state).split(".")[-1]]: int(n) for state, n in rows}

    def load(self, name: str) -> optuna.Study:
        """The study (raises ``KeyError`` when absent)."""
        return optuna.load_study(study_name=name, storage=self.storage)

    def study_id(self, name: str) -> int | None:
        """Optuna's id of the study (ids never change, so they are remembered); None when absent."""
        with self._lock:
            if name in self._ids:
                return self._ids[name]
        try:
            sid = self.storage.get_study_id_from_name(name)
        except KeyError:
            return None
        with self._lock:
            self._ids[name] = sid
        return sid

    def _trials(self, name: str, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
        """Trials in ``states``, filtered in SQL. Straight from the RDB storage: a loaded
        ``optuna.Study`` wraps it in a cache that first reads *every* trial of the study."""
        sid = self.study_id(name)
        if sid is None:
            return []
        return self.storage.get_all_trials(sid, deepcopy=False, states=states)

    def finished(self, name: str, counts: dict[TrialState, int] | None = None) -> FinishedTrials:
        """The study's finished trials, from memory unless their counts changed."""
        counts = self.state_counts(name) if counts is None else counts
        key = tuple(counts.get(s, 0) for s in FINISHED)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit.key == key:
                self._cache.move_to_end(name)
                return hit
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one thread reads a changed study; the others wait for its result
            with self._lock:
                hit = self._cache.get(name)
                if hit is not None and hit.key == key:
                    return hit
            value = self._read_finished(name, hit)
            with self._lock:
                if self.cache_size > 0:
                    self._cache[name] = value
                    self._cache.move_to_end(name)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            return value

    def _read_finished(self, name: str, previous: FinishedTrials | None) -> FinishedTrials:
        """Read the finished trials; with a previous read, only the ones finished since.

        During a search trials finish one at a time: fetching just those (by id) keeps a
        10,000-trial study from being re-read in full after every finished trial.
        """
        trials: list[FrozenTrial] | None = None
        sid = self.study_id(name)
        if previous is not None and previous.trials and sid is not None:
            with self.storage.engine.connect() as conn:
                ids = {int(i) for (i,) in conn.execute(_FINISHED_IDS_SQL, {"sid": sid})}
            known = {t._trial_id for t in previous.trials}
            new = ids - known
            if known <= ids and len(new) <= _INCREMENTAL_MAX:
                fresh = [self.storage.get_trial(i) for i in sorted(new)]
                trials = sorted([*previous.trials, *(t for t in fresh if t.state in FINISHED)], key=lambda t: t.number)
        if trials is None:
            trials = self._trials(name, FINISHED)
        # counts and trials are read in separate queries; if a trial finished in between, key the
        # entry on what was actually read, so the next call notices and reads again.
        actual = tuple(sum(t.state == s for t in trials) for s in FINISHED)
        old = {r.trial: r for r in previous.records} if previous is not None else {}
        records = [old.get(t.number) or record_of(name, t) for t in trials]  # records of old trials are reused
        return FinishedTrials(actual, trials, records, {t.number: t for t in trials})

    def live(self, name: str) -> list[FrozenTrial]:
        """Running and waiting trials, read fresh (they still change)."""
        return self._trials(name, LIVE)

    def records(self, study: optuna.Study) -> list[ScoredRecord]:
        """The scored records: a drop-in ``records_of`` for ``best_under_budget``, which looks at
        nothing else, so its answer equals the one from :func:`~structsearch.search.study_records`."""
        return self.finished(study.study_name).scored()
