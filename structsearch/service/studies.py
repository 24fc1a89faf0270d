"""Reading Optuna studies for the API: trial counts, records, fronts -- cached per study.

``study.get_trials()`` deserialises every trial with all its attributes; at 10,000 trials that
is most of a second per request. But a *finished* trial (complete, pruned, failed) never changes
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
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text

from structsearch.search.results import TrialRecord, record_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
LIVE = (TrialState.RUNNING, TrialState.WAITING)

_COUNTS_SQL = text(
    "SELECT t.state, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "WHERE s.study_name = :name GROUP BY t.state"
)


@dataclass(frozen=True)
class FinishedTrials:
    """The finished trials of a study, as Optuna trials and as records, in trial-number order."""

    key: tuple[int, ...]
    trials: list[FrozenTrial]
    records: list[TrialRecord]
    by_number: dict[int, FrozenTrial] = field(repr=False)


class StudyReader:
    """Thread-safe read access to the studies in one database (one instance per API process)."""

    def __init__(self, url: str, cache_size: int = 64) -> None:
        self.url = url
        self.cache_size = cache_size
        self._storage: optuna.storages.RDBStorage | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, FinishedTrials] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

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
            value = self._read_finished(name, key)
            with self._lock:
                if self.cache_size > 0:
                    self._cache[name] = value
                    self._cache.move_to_end(name)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            return value

    def _read_finished(self, name: str, key: tuple[int, ...]) -> FinishedTrials:
        try:
            study = self.load(name)
        except KeyError:
            return FinishedTrials(key, [], [], {})
        trials = study.get_trials(deepcopy=False, states=FINISHED)
        # counts and trials are read in two queries; if a trial finished in between, the key
        # says fewer than we hold: re-key from what was actually read so the next call re-reads.
        actual = tuple(sum(t.state == s for t in trials) for s in FINISHED)
        return FinishedTrials(actual, trials, [record_of(name, t) for t in trials], {t.number: t for t in trials})

    def live(self, name: str) -> list[FrozenTrial]:
        """Running and waiting trials, read fresh (they still change)."""
        try:
            study = self.load(name)
        except KeyError:
            return []
        return study.get_trials(deepcopy=False, states=LIVE)

    def records(self, study: optuna.Study) -> list[TrialRecord]:
        """Records of the finished trials: a drop-in ``records_of`` for ``best_under_budget``.

        Only complete trials carry scores, so fronts and bests from these equal those from
        :func:`structsearch.search.results.study_records`.
        """
        return self.finished(study.study_name).records

    def trial(self, name: str, number: int) -> FrozenTrial | None:
        """One trial by number (finished from memory, live ones fresh)."""
        hit = self.finished(name).by_number.get(number)
        if hit is not None:
            return hit
        return next((t for t in self.live(name) if t.number == number), None)
