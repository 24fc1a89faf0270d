"""The trials read model (issue 14) against a real PostgreSQL and real (tiny) trials.

Searches here are run by the worker's own job code (:class:`TrialRunner`) in this process, the
way ``test_faults`` runs them: each ``run`` is one queued job of a worker.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import delete, select, update

from structsearch.search.storage import open_storage
from structsearch.service.readmodel import TrialSync, drift
from structsearch.service.tables import Search, TrialRow
from tests.service.conftest import make_settings, tiny_spec
from tests.service.test_e2e import CLI
from tests.service.test_faults import Harness, harness_for


@pytest.fixture
def harness(db_url: str, tmp_path: Path, data_root: Path, service_home: Path) -> Iterator[Harness]:
    yield from harness_for(make_settings(db_url, tmp_path / "artifacts", data_root))


def search_row(h: Harness, sid: str) -> Search:
    row = h.row(sid)
    assert row is not None
    return row


def drift_of(h: Harness, sid: str) -> list[str]:
    storage = open_storage(h.settings.database_url)
    try:
        return drift(h.db, storage, search_row(h, sid))
    finally:
        storage.engine.dispose()


def seqs(h: Harness, sid: str) -> dict[int, int]:
    with h.db.session() as s:
        return dict(s.execute(select(TrialRow.number, TrialRow.seq).where(TrialRow.search_id == uuid.UUID(sid))).all())


def run_jobs(h: Harness, sid: str, jobs: int) -> None:
    runner = h.runner()
    for _ in range(jobs):
        runner.run(sid)


def test_the_read_model_equals_optunas_trials_after_a_search_by_two_workers(harness: Harness) -> None:
    sid, name = harness.submit(tiny_spec(name="rm-two", trials=6))
    assert drift_of(harness, sid) == []  # the enqueued baselines are there from submission on
    assert search_row(harness, sid).n_waiting == 3
    workers = [threading.Thread(target=run_jobs, args=(harness, sid, 4)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    row = search_row(harness, sid)
    assert row.status == "done"
    trials = harness.trials(name)
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    assert drift_of(harness, sid) == []
    assert row.n_trials == 6 and row.n_own_complete == 6 and row.n_waiting == 0 and row.best_number is not None
    # a re-run job (procrastinate retries, a second worker) changes nothing: no row is rewritten
    before = seqs(harness, sid)
    study = optuna.load_study(study_name=name, storage=harness.settings.database_url)
    with _storage(harness) as storage:
        sync = TrialSync(harness.db, storage, uuid.UUID(sid), study._study_id)
        assert sync.record([t.number for t in trials]) == 0 and sync.backfill() == 0
    assert seqs(harness, sid) == before and drift_of(harness, sid) == []


class _storage:
    """Optuna's storage of the test database, disposed after use."""

    def __init__(self, h: Harness) -> None:
        self.storage = open_storage(h.settings.database_url)

    def __enter__(self) -> optuna.storages.RDBStorage:
        return self.storage

    def __exit__(self, *exc: object) -> None:
        self.storage.engine.dispose()


def test_backfill_fills_an_empty_read_model_and_check_finds_a_deleted_row(harness: Harness) -> None:
    sid, name = harness.submit(tiny_spec(name="rm-backfill", trials=4))
    run_jobs(harness, sid, 4)
    assert drift_of(harness, sid) == []
    with harness.db.session() as s:  # as a database migrated to 0004 holds it: rows empty, counts zero
        s.execute(delete(TrialRow).where(TrialRow.search_id == uuid.UUID(sid)))
        s.execute(update(Search).where(Search.id == uuid.UUID(sid)).values(n_trials=0, best_number=None))
    check = cli("db", "check", "--storage", harness.settings.database_url)
    lines = check.stdout.splitlines()
    assert check.returncode == 1, check.stderr
    assert "trial 0 (complete) is missing from ss_trials" in lines[0] and "n_trials is 0, the study says 4" in lines[-3]
    assert lines[-1] == "1 searches checked, 6 differences"  # 4 rows, n_trials, best_number
    backfill = cli("db", "backfill", "--search", sid, "--storage", harness.settings.database_url)
    assert backfill.returncode == 0 and f"({name}): 4 trial rows written" in backfill.stdout, backfill.stderr
    assert drift_of(harness, sid) == []
    again = cli("db", "check", "--storage", harness.settings.database_url)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "1 searches checked, 0 differences"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
