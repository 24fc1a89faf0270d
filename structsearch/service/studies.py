"""Optuna's storage for the API: opened once per process, for what only Optuna's storage holds.

No request reads a study's trials from here: the API answers from the read model
(:mod:`structsearch.service.readmodel`), because Optuna takes seconds to read a 10,000-trial
study. What is left: a submission checks that its study name is free and writes the new study's
trials (baselines, warm-start copies) to the read model, and a trained student's download opens
that one trial.
"""

from __future__ import annotations

import threading

import optuna

from structsearch.service.database import Database
from structsearch.service.readmodel import study_id_of


class StudyReader:
    """Thread-safe read access to the studies in one database (one instance per API process)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.url = db.url
        self._storage: optuna.storages.RDBStorage | None = None
        self._lock = threading.Lock()
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

    def study_id(self, name: str) -> int | None:
        """Optuna's id of the study (ids never change, so they are remembered); None when absent.

        Looked up with one indexed query on the service's engine: opening Optuna's storage for it
        took a cold API process about a second (its schema checks) on its first request."""
        with self._lock:
            if name in self._ids:
                return self._ids[name]
        sid = study_id_of(self.db, name)
        if sid is None:
            return None
        with self._lock:
            self._ids[name] = sid
        return sid
