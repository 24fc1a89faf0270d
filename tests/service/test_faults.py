"""Faults a search survives: a failed trial costs one retry, never the search (issue 13).

* a trial that raises a non-project error is retried by the queue, with backoff, and the search
  still ends with exactly the requested complete trials (real worker process);
* N failed trials in a row fail the search with the project's one-line message, free of the
  exception's text (its paths, hosts, passwords);
* a trial that runs too long is failed at its deadline, and a cancelled search stops its running
  trial at the next training step (Optuna's heartbeat would keep both alive forever);
* SIGTERM while a long trial drains never runs that job a second time (real worker processes).

The fault injected is a real one, not a mock: the folder a trial saves its student to is blocked
by a plain file, so ``save_student`` raises ``FileExistsError`` at the end of training -- what a
full or read-only artifacts volume looks like to a trial. (Tests run as root, where permission
bits would not stop a write.) Removing the file clears the fault.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from structsearch.search.objective import FAILURE_ATTR
from structsearch.service.database import Database, libpq_url
from structsearch.service.faults import TrialFailed
from structsearch.service.jobs import TrialRunner
from structsearch.service.queue import JobQueue
from structsearch.service.repository import SearchRepository
from structsearch.service.searches import cancel_search, submit_search
from structsearch.service.settings import ServiceSettings
from structsearch.service.studies import StudyReader
from tests.service.conftest import make_settings, tiny_spec
from tests.service.test_e2e import CLI, Proc, wait_for

#: Worker processes, heartbeats or time limits: run alone (scripts/test.sh), not beside other tests.
pytestmark = pytest.mark.serial


@dataclass
class Harness:
    """The service's parts in this process: submit like the API does, run jobs like a worker does."""

    settings: ServiceSettings
    db: Database
    reader: StudyReader
    queue: JobQueue

    def submit(self, spec: dict[str, Any]) -> tuple[str, str]:
        row = submit_search(spec, self.settings, self.db, self.reader, self.queue)
        return str(row.id), row.name

    def runner(self) -> TrialRunner:
        return TrialRunner(self.settings, self.db, poll_s=0.2)

    def row(self, sid: str) -> Any:
        with self.db.session() as s:
            return SearchRepository(s).get(uuid.UUID(sid))

    def trials(self, name: str) -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=name, storage=self.settings.database_url).get_trials(deepcopy=False)

    def block_artifacts(self, name: str) -> Path:
        """The fault: a plain file where the study's artifact folder goes."""
        self.settings.artifacts.mkdir(parents=True, exist_ok=True)
        blocker = self.settings.artifacts / name
        blocker.write_text("not a folder")
        return blocker


def harness_for(settings: ServiceSettings) -> Iterator[Harness]:
    db = Database(settings.database_url)
    h = Harness(settings, db, StudyReader(db), JobQueue(settings.database_url))
    try:
        yield h
    finally:
        h.queue.close()
        h.reader.close()
        db.dispose()


@pytest.fixture
def harness(db_url: str, tmp_path: Path, data_root: Path, service_home: Path, request: Any) -> Iterator[Harness]:
    changes = getattr(request, "param", {})
    yield from harness_for(make_settings(db_url, tmp_path / "artifacts", data_root, **changes))


def with_settings(**changes: Any) -> Any:
    return pytest.mark.parametrize("harness", [changes], indirect=True, ids=["settings"])


def job_events(url: str, kinds: tuple[str, ...]) -> list[tuple[int, str, datetime.datetime]]:
    """``(job id, event, time)`` of procrastinate's event log, in order."""
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(
            "SELECT job_id, type::text, at FROM procrastinate_events WHERE type::text = ANY(%s) ORDER BY id",
            (list(kinds),),
        ).fetchall()


def jobs_started(url: str) -> dict[int, int]:
    """How many times each trial job was started."""
    return dict(Counter(job_id for job_id, _, _ in job_events(url, ("started",))))


# -- in this process: counting failures, the deadline, cancel ------------------------------------


@with_settings(max_consecutive_failures=2)
def test_failures_in_a_row_fail_the_search_with_a_message_free_of_exception_text(harness: Harness) -> None:
    sid, name = harness.submit(tiny_spec(name="always-fails", trials=2))
    blocker = harness.block_artifacts(name)
    runner = harness.runner()

    # first failure: the trial fails, the job asks the queue for a retry, the search goes on
    with pytest.raises(TrialFailed):
        runner.run(sid)
    assert harness.row(sid).status == "running"
    failed = [t for t in harness.trials(name) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[FAILURE_ATTR] == "FileExistsError"

    # second failure in a row: the search fails, with our words only
    assert runner.run(sid, attempts=1).startswith("failed: ")
    row = harness.row(sid)
    assert row.status == "failed"
    assert row.error == "trial failed 2 times in a row: FileExistsError"
    assert str(blocker) not in row.error and "Errno" not in row.error
    assert [t.state for t in harness.trials(name)].count(TrialState.FAIL) == 2


def run_in_thread(runner: TrialRunner, sid: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = runner.run(sid)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)  # today's code never returns: do not hang pytest
    thread.start()
    return thread, out


@with_settings(trial_deadline_s=3.0, max_consecutive_failures=1, max_proxy_steps=1_000_000)
def test_a_hung_trial_is_failed_by_its_deadline(harness: Harness) -> None:
    # a million proxy steps: hours on a CPU, i.e. a trial that never ends while its heartbeat beats
    sid, name = harness.submit(tiny_spec(name="hung", trials=1, steps=1_000_000, baselines=["uniform"]))
    start = time.monotonic()
    thread, out = run_in_thread(harness.runner(), sid)
    thread.join(120)
    assert not thread.is_alive(), "the trial ran past its deadline"
    assert out.get("result") == "failed: trial failed 1 time in a row: passed its deadline of 3 s", out
    assert time.monotonic() - start < 60
    (trial,) = harness.trials(name)
    assert trial.state == TrialState.FAIL and trial.user_attrs[FAILURE_ATTR] == "passed its deadline of 3 s"
    assert harness.row(sid).error == "trial failed 1 time in a row: passed its deadline of 3 s"


@with_settings(max_proxy_steps=1_000_000)
def test_cancel_stops_the_running_trial_at_the_next_step(harness: Harness) -> None:
    sid, name = harness.submit(tiny_spec(name="cancel-me", trials=1, steps=1_000_000, baselines=["uniform"]))
    thread, out = run_in_thread(harness.runner(), sid)

    def training() -> bool:
        return any(t.state == TrialState.RUNNING and "macs" in t.user_attrs for t in harness.trials(name))

    wait_for("the trial to train", training, 120)
    cancelled_at = time.monotonic()
    cancelled = cancel_search(harness.db, harness.queue, uuid.UUID(sid))
    assert cancelled is not None and cancelled.status == "cancelled"
    thread.join(60)
    assert not thread.is_alive(), "cancel did not stop the running trial"
    assert time.monotonic() - cancelled_at < 30
    assert out.get("result") == "stopped: search is cancelled", out
    (trial,) = harness.trials(name)
    assert trial.state == TrialState.FAIL and trial.user_attrs[FAILURE_ATTR] == "its search is cancelled"
    assert harness.row(sid).status == "cancelled"


# -- real worker processes: the queue's retry, SIGTERM drain -------------------------------------


def worker_env(settings: ServiceSettings, service_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRUCTSEARCH_")}
    env.update(
        STRUCTSEARCH_HOME=str(service_home),
        STRUCTSEARCH_ARTIFACTS=str(settings.artifacts),
        STRUCTSEARCH_TRIAL_HEARTBEAT_S="1",
        STRUCTSEARCH_WORKER_HEARTBEAT_S="1",
        STRUCTSEARCH_WORKER_STALLED_AFTER_S="4",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_worker(name: str, settings: ServiceSettings, env: dict[str, str], logdir: Path) -> Proc:
    proc = Proc(name, [*CLI, "worker", "--name", name, "--storage", settings.database_url], env, logdir)
    proc.wait_ready(f"worker {name} ready")
    return proc


@pytest.mark.slow
def test_a_trial_that_raises_once_is_retried_and_the_search_completes(
    harness: Harness, service_home: Path, tmp_path: Path
) -> None:
    env = worker_env(harness.settings, service_home, STRUCTSEARCH_RETRY_WAIT_S="3")
    sid, name = harness.submit(tiny_spec(name="retried", trials=2))
    blocker = harness.block_artifacts(name)
    worker = start_worker("w1", harness.settings, env, tmp_path)
    try:

        def failed_once() -> bool:
            return any(t.state == TrialState.FAIL for t in harness.trials(name))

        wait_for("the first trial to fail", failed_once, 120, every=0.1)
        blocker.unlink()  # the fault passes before the retry (3 s backoff)

        def ended() -> str | None:
            status = harness.row(sid).status
            return status if status in ("done", "failed") else None

        assert wait_for("the search to end", ended, 180) == "done", harness.row(sid).error or worker.text()[-3000:]
        trials = harness.trials(name)
        states = sorted(t.state.name for t in trials)
        assert states == ["COMPLETE", "COMPLETE", "FAIL"], states  # exactly the 2 requested, 1 failed
        assert next(t for t in trials if t.state == TrialState.FAIL).user_attrs[FAILURE_ATTR] == "FileExistsError"
        jobs = harness.queue.jobs_of(sid)
        assert sorted(j["status"] for j in jobs) == ["succeeded", "succeeded"], jobs
        assert sorted(j["attempts"] for j in jobs) == [1, 2], jobs  # runs: the failed trial's job ran twice
        # the queue's retry, after its backoff (3 s for a first retry)
        retried = job_events(harness.settings.database_url, ("deferred_for_retry", "started"))
        (job_id,) = {j for j, kind, _ in retried if kind == "deferred_for_retry"}
        kinds = [(kind, at) for j, kind, at in retried if j == job_id]
        assert [k for k, _ in kinds] == ["started", "deferred_for_retry", "started"], kinds
        assert (kinds[2][1] - kinds[1][1]).total_seconds() >= 3 - 0.5
    finally:
        worker.stop()


@pytest.mark.slow
def test_sigterm_during_a_long_trial_never_runs_its_job_twice(
    harness: Harness, service_home: Path, tmp_path: Path
) -> None:
    stalled_after = 3.0
    env = worker_env(harness.settings, service_home, STRUCTSEARCH_WORKER_STALLED_AFTER_S=str(stalled_after))
    draining = start_worker("draining", harness.settings, env, tmp_path)
    sid, name = harness.submit(tiny_spec(name="drained", trials=1, steps=2500, baselines=["uniform"]))
    rescuer = None
    try:

        def training() -> bool:
            return any(t.state == TrialState.RUNNING and "macs" in t.user_attrs for t in harness.trials(name))

        wait_for("the trial to train", training, 120, every=0.1)
        rescuer = start_worker("rescuer", harness.settings, env, tmp_path)  # would re-queue a silent worker's job
        sigterm_at = datetime.datetime.now()  # Optuna stamps trials with naive local time
        draining.signal(signal.SIGTERM)
        assert draining.p.wait(300) == 0, draining.text()[-3000:]
        wait_for("the search to be done", lambda: harness.row(sid).status == "done", 60)

        (trial,) = harness.trials(name)
        assert trial.state == TrialState.COMPLETE
        # the drain outlasted the stalled-worker timeout by a margin: the test exercised the window
        assert trial.datetime_complete is not None
        drained_s = (trial.datetime_complete - sigterm_at).total_seconds()
        assert drained_s > stalled_after + 3, f"the trial ended {drained_s:.1f} s after SIGTERM: too short a test"
        started = jobs_started(harness.settings.database_url)
        assert list(started.values()) == [1], f"a job started more than once: {started}"
        assert "put back in the queue" not in rescuer.text()
    finally:
        draining.stop()
        if rescuer is not None:
            rescuer.stop()
