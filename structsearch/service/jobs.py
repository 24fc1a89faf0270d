"""The trial job: what a worker does with one queued job of a search.

Each job runs (at most) one trial of its search, through the same :func:`run_search` the CLI uses
(``max_trials=1``), against the shared Optuna study. The study -- not the queue -- counts trials,
so however jobs and workers interleave, the search ends with exactly ``spec.trials`` own trials:

1. before starting a trial the job re-reads the search's status: cancelled, failed or done
   searches run nothing more (cancel = "finish the running trials, start no new ones"); and it
   runs the submit-time checks again on the stored spec
   (:func:`~structsearch.service.admission.recheck_stored`: a data root removed or a symlink
   swapped since submit fails the search, nothing outside the roots is read);
2. it fails stale trials first (Optuna heartbeats: a trial whose worker was killed stops beating,
   is marked failed after the grace period, and ``RetryHeartbeatStaleTrialCallback`` queues a retry of
   the same parameters that this or the next job runs);
3. when every remaining slot is held by a running trial it waits rather than returning, because
   one of those may be a dead worker's: this job is then the one that re-runs it (procrastinate
   hands a dead worker's job back to the queue; see :mod:`structsearch.service.worker`);
4. a worker that is stopping (SIGTERM) hands a job that has not started its trial back to the
   queue (:class:`HandedBack`); one that is mid-trial finishes it first.

A :class:`StructsearchError` (bad data on the worker's machine, a spec that no longer fits) marks
the search failed with its one-line message. Anything else (CUDA out of memory, a full disk, the
database restarting, a trial past its deadline) fails that trial only and the job is retried with
backoff; the search fails after ``max_consecutive_failures`` failed trials in a row
(:mod:`structsearch.service.faults`). Each trial runs under a
:class:`~structsearch.search.guard.TrialGuard`: past its deadline, or once its search is cancelled,
it stops at the next training step.
Stored errors are the project's own one-line messages (raw text may hold secrets; the log has
it, password hidden).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from structsearch.errors import StructsearchError, Unavailable
from structsearch.search.guard import StopRequested, TrialGuard
from structsearch.service.database import Database
from structsearch.service.faults import (
    HandedBack,
    TrialFailed,
    failure_message,
    failures_in_a_row,
    trial_deadline,
)
from structsearch.service.public_errors import log_error, public_error
from structsearch.service.readmodel import TrialSync, running_trial
from structsearch.service.repository import SearchRepository
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import ACTIVE_STATUSES, SearchStatus

if TYPE_CHECKING:  # pragma: no cover - the search package (torch) is imported when a job runs
    import optuna
    from optuna.trial import FrozenTrial
    from procrastinate import JobContext

    from structsearch.search.spec import StudySpec

TASK_NAME = "structsearch.run_trial"

log = logging.getLogger("structsearch.worker")


@dataclass
class TrialRunner:
    """Per-worker-process state a job needs (passed to jobs in procrastinate's context)."""

    settings: ServiceSettings
    db: Database
    stopping: threading.Event = field(default_factory=threading.Event)
    #: How often a job waiting on other workers' running trials looks again, seconds.
    poll_s: float = 1.0

    def run(self, search_id: str, should_abort: Callable[[], bool] = lambda: False, attempts: int = 0) -> str:
        """Run one trial of the search (or nothing, if it needs none); returns what happened.

        ``attempts``: how many times this job ran before (procrastinate's count). Raises
        :class:`HandedBack` or :class:`TrialFailed` for the queue to run the job again.
        """
        from structsearch.search.spec import parse_study_spec
        from structsearch.service.admission import recheck_stored

        try:
            sid = uuid.UUID(search_id)
        except ValueError:
            return f"skipped: '{search_id}' is not a search id"
        guard = TrialGuard(stop_reason=lambda: self._stop_reason(sid, should_abort))
        spec: StudySpec | None = None
        try:
            with self.db.session() as s:
                row = SearchRepository(s).get(sid)
                if row is None:
                    return "skipped: no such search"
                if row.search_status.final:
                    return f"skipped: search is {row.status}"
                stored_spec = row.spec
                SearchRepository(s).transition(sid, SearchStatus.running, {SearchStatus.queued})
            spec = parse_study_spec(stored_spec, "stored spec")
            recheck_stored(spec, self.settings)
            return self._one_trial(sid, spec, should_abort, guard)
        except HandedBack:
            raise
        except Unavailable as e:  # the storage is down: a fault, not the user's input
            return self._after_failure(sid, spec, e, guard, attempts)
        except StructsearchError as e:
            log.warning("search %s failed: %s", search_id, e)
            self._set(sid, SearchStatus.failed, public_error(e))
            return f"failed: {e}"
        except Exception as e:  # noqa: BLE001 - any other error is a fault: counted, logged, retried
            return self._after_failure(sid, spec, e, guard, attempts)

    def _after_failure(
        self, sid: uuid.UUID, spec: StudySpec | None, error: Exception, guard: TrialGuard, attempts: int
    ) -> str:
        """Fail the search after too many failures in a row; else raise :class:`TrialFailed` (retry)."""
        where = f"trial {guard.trial_number}" if guard.trial_number is not None else "job"
        log_error(log, f"search {sid}: {where} failed", error, self.settings.database_url)
        failure = type(error).__name__
        try:
            status = self._status(sid)
            if status is None or status.final:  # e.g. cancelled: the guard stopped its running trial
                return f"stopped: search is {status.value if status else 'gone'}"
            if isinstance(error, StopRequested):  # its job was aborted: not a failure, nothing to retry
                return f"stopped: {error}"
            count = attempts + 1  # no trial ran: the job's own runs are the failures in a row
            if guard.trial_number is not None and spec is not None:
                in_study, last = failures_in_a_row(self._trials_of(spec))
                count, failure = max(1, in_study), last or failure
            if count >= self.settings.max_consecutive_failures:
                message = failure_message(count, failure)
            elif attempts + 1 >= self.settings.job_max_attempts:
                message = f"a trial job of this search failed {attempts + 1} times: {failure}"
            else:
                message = None
            if message is not None:
                self._set(sid, SearchStatus.failed, message)
                return f"failed: {message}"
        except Exception:  # the database is away too: the retry will look again
            log.warning("search %s: could not count its failures; the job will be retried", sid, exc_info=True)
            count = attempts + 1
        raise TrialFailed(f"{failure} (failure {count} in a row)") from error

    def _stop_reason(self, sid: uuid.UUID, should_abort: Callable[[], bool]) -> str | None:
        """Why the running trial should stop now (asked by its guard every few seconds)."""
        if should_abort():
            return "its job was aborted"
        try:
            status = self._status(sid)
        except Exception:  # noqa: BLE001 - a database blip must not fail a trial that can still finish
            return None
        if status is None or status.final:
            return f"its search is {status.value if status else 'gone'}"
        return None

    def _trials_of(self, spec: StudySpec) -> list[FrozenTrial]:
        import optuna

        from structsearch.search.storage import open_storage

        storage = open_storage(self.settings.database_url)
        try:
            return optuna.load_study(study_name=spec.name, storage=storage).get_trials(deepcopy=False)
        finally:
            storage.remove_session()
            storage.engine.dispose()

    def _one_trial(self, sid: uuid.UUID, spec: StudySpec, should_abort: Callable[[], bool], guard: TrialGuard) -> str:
        import optuna
        from optuna.trial import TrialState

        from structsearch.search.runner import run_search
        from structsearch.search.storage import fail_stale_trials, open_storage
        from structsearch.search.study import own_trials

        url, heartbeat = self.settings.database_url, self.settings.trial_heartbeat_s
        storage = open_storage(url, heartbeat_interval=heartbeat)
        try:
            while True:
                if self.stopping.is_set():
                    raise HandedBack("worker stopping before the trial started")
                if should_abort():
                    return "aborted"
                status = self._status(sid)
                if status is None or status.final:
                    return f"stopped: search is {status.value if status else 'gone'}"
                try:
                    study = optuna.load_study(study_name=spec.name, storage=storage)
                except KeyError:
                    study = None  # created by the API on submit; absent only if someone deleted it
                mine: list[FrozenTrial] = []
                sync: TrialSync | None = None
                if study is not None:
                    fail_stale_trials(study)
                    sync = TrialSync(self.db, storage, sid, study._study_id)
                    sync.safely(sync.catch_up)  # stale trials failed, retries queued, others' trials
                    mine = own_trials(study)
                    finished = [t for t in mine if t.state != TrialState.RUNNING]
                    if len(finished) >= spec.trials:
                        self._set(sid, SearchStatus.done)
                        return "search complete"
                guard.deadline_s = trial_deadline(self.settings.trial_deadline_s, spec.proxy.steps, mine)
                if study is not None and len(mine) >= spec.trials:
                    # Every remaining slot is running elsewhere; one may be a dead worker's.
                    running = [t for t in mine if t.state == TrialState.RUNNING]
                    self._wait_for_any(sid, study, running, should_abort, guard.deadline_s + 3 * heartbeat + 60)
                    continue
                ended: list[int] = []
                try:
                    study = run_search(
                        spec,
                        url,
                        heartbeat_interval=heartbeat,
                        max_trials=1,
                        sampler_seed=secrets.randbits(31),
                        artifacts=self.settings.artifacts,
                        guard=guard,
                        on_teacher=lambda score, warning: self._note_teacher(sid, score, warning),
                        **(self._read_model_hooks(sync, ended) if sync is not None else {}),
                    )
                finally:  # a trial that raised (Optuna's callbacks skip it): read back from Optuna
                    if sync is not None and (number := guard.trial_number) is not None and number not in ended:
                        sync.safely(sync.record, [number])
                if len([t for t in own_trials(study) if t.state != TrialState.RUNNING]) >= spec.trials:
                    self._set(sid, SearchStatus.done)
                return "ran a trial"
        finally:
            storage.remove_session()
            storage.engine.dispose()

    @staticmethod
    def _read_model_hooks(sync: TrialSync, ended: list[int]) -> dict[str, Callable[..., None]]:
        """``run_search``'s hooks that write the job's trial to the read model: a running row as
        it starts (``/trials?state=running`` and ``/events`` show it at once), its final row from
        the trial Optuna handed its callbacks (no read back); ``ended`` collects the latter's
        numbers."""

        def started(trial: optuna.Trial) -> None:
            sync.safely(sync.write, [running_trial(trial)])

        def finished(trial: FrozenTrial) -> None:
            sync.safely(sync.write, [trial])
            ended.append(trial.number)

        return {"on_trial_start": started, "on_trial_end": finished}

    def _wait_for_any(
        self,
        sid: uuid.UUID,
        study: optuna.Study,
        running: list[FrozenTrial],
        should_abort: Callable[[], bool],
        max_wait_s: float,
    ) -> None:
        """Wait until one of ``running`` finishes (or goes stale and is failed) or the search ends.

        Each look reads only those trials (and fails stale ones), not the whole study. Bounded: a
        running trial ends within its deadline, and a dead worker's goes stale within Optuna's
        grace period, so after ``max_wait_s`` something is wrong elsewhere and the job is handed
        back to the queue instead of holding this worker.
        """
        from structsearch.search.storage import fail_stale_trials

        give_up = time.monotonic() + max_wait_s
        while time.monotonic() < give_up:
            if self.stopping.wait(self.poll_s):
                return  # the loop hands the job back
            if should_abort():
                return
            fail_stale_trials(study)
            if any(study._storage.get_trial(t._trial_id).state.is_finished() for t in running):
                return
            status = self._status(sid)
            if status is None or status.final:
                return
        raise HandedBack(f"waited {max_wait_s:.0f} s for other workers' trials")

    def _note_teacher(self, sid: uuid.UUID, score: float, warning: str | None) -> None:
        """``run_search``'s ``on_teacher``: the score and warning go on the search (the API shows
        them; a worker's own warnings reach no user)."""
        if warning is not None:
            log.warning("search %s: %s", sid, warning)
        try:
            with self.db.session() as s:
                SearchRepository(s).note_teacher(sid, score, warning)
        except Exception:  # a database blip must not fail a trial that can still run
            log.warning("search %s: could not store its teacher's score", sid, exc_info=True)

    def _status(self, sid: uuid.UUID) -> SearchStatus | None:
        with self.db.session() as s:
            return SearchRepository(s).status_of(sid)

    def _set(self, sid: uuid.UUID, status: SearchStatus, error: str | None = None) -> bool:
        with self.db.session() as s:
            return SearchRepository(s).transition(sid, status, ACTIVE_STATUSES, error=error)


def run_trial_job(context: JobContext, search_id: str) -> str:
    """The procrastinate task (registered by :func:`structsearch.service.queue.make_queue_app`)."""
    runner: TrialRunner = context.additional_context["runner"]
    return runner.run(search_id, context.should_abort, attempts=context.job.attempts)
