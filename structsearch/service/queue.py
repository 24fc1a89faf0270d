"""The job queue: procrastinate on the service's PostgreSQL, one job per requested trial.

Why one job per trial rather than one per search: jobs spread a search over every free worker on
every machine, a dead worker loses at most one trial's work, and cancelling a search is
cancelling its queued jobs. The Optuna study (shared RDB storage) decides *what* each trial
tries; the queue only decides *who* runs the next one.

:func:`make_queue_app` builds the procrastinate app both sides use: the API defers and cancels
through :class:`JobQueue` (synchronous connector), workers run jobs (asynchronous connector, see
:mod:`structsearch.service.worker`).
"""

from __future__ import annotations

import threading
from typing import Any

import procrastinate
from procrastinate.types import JSONDict

from structsearch.service.database import libpq_url
from structsearch.service.faults import TrialRetry
from structsearch.service.jobs import TASK_NAME, run_trial_job

QUEUE = "searches"


def make_queue_app(connector: procrastinate.BaseConnector, retry: TrialRetry | None = None) -> procrastinate.App:
    """The procrastinate app with the trial task registered (no connection is made here).

    ``retry`` (workers pass theirs, from the settings): a job handed back by a stopping worker goes
    straight back to the queue, a failed trial's job after a backoff; any other failure is final
    for the job (the job has marked its search failed). Deferring jobs does not use it.
    """
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, queue=QUEUE, pass_context=True, retry=retry or TrialRetry())(run_trial_job)
    return app


class JobQueue:
    """Deferring and cancelling trial jobs from the API (thread-safe, connects on first use)."""

    def __init__(self, database_url: str) -> None:
        self._app = make_queue_app(
            procrastinate.SyncPsycopgConnector(conninfo=libpq_url(database_url), min_size=1, max_size=4)
        )
        self._opened = False
        self._lock = threading.Lock()

    def _open(self) -> procrastinate.App:
        with self._lock:
            if not self._opened:
                self._app.open()
                self._opened = True
        return self._app

    def defer_trials(self, search_id: str, trials: int) -> list[int]:
        """Queue ``trials`` jobs for the search; returns their job ids."""
        app = self._open()
        jobs: list[JSONDict] = [{"search_id": search_id} for _ in range(trials)]
        return app.tasks[TASK_NAME].batch_defer(*jobs)

    def cancel_queued(self, search_id: str) -> int:
        """Cancel the search's jobs that no worker has started; returns how many."""
        app = self._open()
        cancelled = 0
        for job in app.job_manager.list_jobs(task=TASK_NAME, status="todo"):
            if job.task_kwargs.get("search_id") == search_id and job.id is not None:
                cancelled += bool(app.job_manager.cancel_job_by_id(job.id))
        return cancelled

    def jobs_of(self, search_id: str) -> list[dict[str, Any]]:
        """The search's jobs with their status (for tests and diagnostics)."""
        app = self._open()
        return [
            {"id": j.id, "status": j.status, "attempts": j.attempts, "worker_id": j.worker_id}
            for j in app.job_manager.list_jobs(task=TASK_NAME)
            if j.task_kwargs.get("search_id") == search_id
        ]

    def close(self) -> None:
        with self._lock:
            if self._opened:
                self._app.close()
                self._opened = False
