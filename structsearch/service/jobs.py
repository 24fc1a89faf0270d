"""The trial job: what a worker does with one queued job of a search.

Each job runs (at most) one trial of its search, through the same :func:`run_search` the CLI uses
(``max_trials=1``), against the shared Optuna study. The study -- not the queue -- counts trials,
so however jobs and workers interleave, the search ends with exactly ``spec.trials`` own trials:

1. before starting a trial the job re-reads the search's status: cancelled, failed or done
   searches run nothing more (cancel = "finish the running trials, start no new ones");
2. it fails stale trials first (Optuna heartbeats: a trial whose worker was killed stops beating,
   is marked failed after the grace period, and ``RetryHeartbeatStaleTrialCallback`` queues a retry of
   the same parameters that this or the next job runs);
3. when every remaining slot is held by a running trial it waits rather than returning, because
   one of those may be a dead worker's: this job is then the one that re-runs it (procrastinate
   hands a dead worker's job back to the queue; see :mod:`structsearch.service.worker`);
4. a worker that is stopping (SIGTERM) hands a job that has not started its trial back to the
   queue (:class:`HandedBack`); one that is mid-trial finishes it first.

A :class:`StructsearchError` (bad data on the worker's machine, a spec that no longer fits) marks
the search failed with its one-line message; anything else too, with a fixed message (the raw
text may hold secrets; the log has it, password hidden), and the job fails loudly.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from structsearch.errors import StructsearchError
from structsearch.service.database import Database
from structsearch.service.public_errors import log_error, public_error
from structsearch.service.repository import SearchRepository
from structsearch.service.settings import ServiceSettings
from structsearch.service.tables import ACTIVE_STATUSES, SearchStatus

if TYPE_CHECKING:  # pragma: no cover - the search package (torch) is imported when a job runs
    from procrastinate import JobContext

    from structsearch.search.spec import StudySpec

TASK_NAME = "structsearch.run_trial"

log = logging.getLogger("structsearch.worker")


class HandedBack(Exception):
    """The worker is stopping before this job started a trial; the job goes back to the queue."""


@dataclass
class TrialRunner:
    """Per-worker-process state a job needs (passed to jobs in procrastinate's context)."""

    settings: ServiceSettings
    db: Database
    stopping: threading.Event = field(default_factory=threading.Event)
    #: How often a job waiting on other workers' running trials looks again, seconds.
    poll_s: float = 1.0

    def run(self, search_id: str, should_abort: Callable[[], bool] = lambda: False) -> str:
        """Run one trial of the search (or nothing, if it needs none); returns what happened."""
        from structsearch.search.spec import parse_study_spec

        try:
            sid = uuid.UUID(search_id)
        except ValueError:
            return f"skipped: '{search_id}' is not a search id"
        with self.db.session() as s:
            row = SearchRepository(s).get(sid)
            if row is None:
                return "skipped: no such search"
            if row.search_status.final:
                return f"skipped: search is {row.status}"
            stored_spec = row.spec
            SearchRepository(s).transition(sid, SearchStatus.running, {SearchStatus.queued})
        try:
            spec = parse_study_spec(stored_spec, "stored spec")
            return self._one_trial(sid, spec, should_abort)
        except HandedBack:
            raise
        except StructsearchError as e:
            log.warning("search %s failed: %s", search_id, e)
            self._set(sid, SearchStatus.failed, public_error(e))
            return f"failed: {e}"
        except Exception as e:
            log_error(log, f"search {search_id} failed", e, self.settings.database_url)
            self._set(sid, SearchStatus.failed, public_error(e))
            raise

    def _one_trial(self, sid: uuid.UUID, spec: StudySpec, should_abort: Callable[[], bool]) -> str:
        import optuna
        from optuna.trial import TrialState

        from structsearch.search.runner import run_search
        from structsearch.search.storage import open_storage
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
                if study is not None:
                    optuna.storages.fail_stale_trials(study)
                    mine = own_trials(study)
                    finished = [t for t in mine if t.state != TrialState.RUNNING]
                    if len(finished) >= spec.trials:
                        self._set(sid, SearchStatus.done)
                        return "search complete"
                    if len(mine) >= spec.trials:
                        # Every remaining slot is running elsewhere; one may be a dead worker's.
                        self.stopping.wait(self.poll_s)
                        continue
                study = run_search(
                    spec,
                    url,
                    heartbeat_interval=heartbeat,
                    max_trials=1,
                    sampler_seed=secrets.randbits(31),
                    artifacts=self.settings.artifacts,
                )
                if len([t for t in own_trials(study) if t.state != TrialState.RUNNING]) >= spec.trials:
                    self._set(sid, SearchStatus.done)
                return "ran a trial"
        finally:
            storage.remove_session()
            storage.engine.dispose()

    def _status(self, sid: uuid.UUID) -> SearchStatus | None:
        with self.db.session() as s:
            return SearchRepository(s).status_of(sid)

    def _set(self, sid: uuid.UUID, status: SearchStatus, error: str | None = None) -> bool:
        with self.db.session() as s:
            return SearchRepository(s).transition(sid, status, ACTIVE_STATUSES, error=error)


def run_trial_job(context: JobContext, search_id: str) -> str:
    """The procrastinate task (registered by :func:`structsearch.service.queue.make_queue_app`)."""
    runner: TrialRunner = context.additional_context["runner"]
    return runner.run(search_id, context.should_abort)
