"""``structsearch worker``: a procrastinate worker running trial jobs, plus dead-worker recovery.

Start as many as you like, on as many machines as share the database. Each takes queued trial
jobs (see :mod:`structsearch.service.jobs`) ``concurrency`` at a time.

Stopping: SIGTERM or SIGINT stops taking jobs; a job mid-trial finishes its trial (procrastinate's
graceful shutdown waits for it), a job still waiting for a slot is handed back to the queue.
Procrastinate's graceful shutdown cancels the worker's heartbeat *before* it waits for running
jobs, so a drain longer than ``worker_stalled_after_s`` would look like a dead worker and another
worker would run the job a second time; :func:`_heartbeat_while_draining` keeps beating until
procrastinate unregisters the worker.

Dead workers (``kill -9``, a lost machine): every worker beats in procrastinate's
``procrastinate_workers`` table. Each live worker looks, every few seconds, for jobs still marked
``doing`` by a worker silent for ``worker_stalled_after_s`` and puts them back in the queue
(procrastinate's documented stalled-job retry). The trial that worker was running stops beating
in Optuna's heartbeat table too; the re-queued job fails it after Optuna's grace period, and
``RetryHeartbeatStaleTrialCallback`` queues its parameters again, so the search still completes with the
requested number of trials.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import warnings

import procrastinate
from procrastinate.worker import Worker

from structsearch.service.database import Database, libpq_url
from structsearch.service.faults import TrialRetry
from structsearch.service.jobs import TASK_NAME, TrialRunner
from structsearch.service.queue import QUEUE, make_queue_app
from structsearch.service.settings import ServiceSettings

log = logging.getLogger("structsearch.worker")


def run_worker(settings: ServiceSettings, concurrency: int = 1, name: str | None = None) -> None:
    """Run until SIGTERM/SIGINT (blocking)."""
    _quiet_optuna_notices()
    asyncio.run(_serve(settings, concurrency, name or f"{socket.gethostname()}-{os.getpid()}"))


async def _serve(settings: ServiceSettings, concurrency: int, name: str) -> None:
    runner = TrialRunner(settings, Database(settings.database_url))
    retry = TrialRetry(settings.retry_wait_s, settings.retry_max_wait_s, settings.job_max_attempts)
    app = make_queue_app(procrastinate.PsycopgConnector(conninfo=libpq_url(settings.database_url)), retry)
    loop = asyncio.get_running_loop()
    async with app.open_async():
        worker = Worker(
            app,
            queues=[QUEUE],
            name=name,
            concurrency=concurrency,
            install_signal_handlers=False,  # ours below: they also tell waiting jobs to hand back
            additional_context={"runner": runner},
            update_heartbeat_interval=settings.worker_heartbeat_s,
            stalled_worker_timeout=settings.worker_stalled_after_s,
            fetch_job_polling_interval=2.0,
        )
        running = asyncio.create_task(worker.run(), name="procrastinate worker")
        draining: list[asyncio.Task[None]] = []

        def stop() -> None:
            if draining:
                return
            log.info("worker %s stopping: finishing running trials", name)
            runner.stopping.set()
            draining.append(loop.create_task(_heartbeat_while_draining(app, worker, settings), name="drain heartbeat"))
            worker.stop()  # procrastinate stops fetching, cancels its heartbeat, waits for running jobs

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        recovery = asyncio.create_task(_requeue_stalled_jobs(app, settings), name="stalled-job recovery")
        log.info("worker %s ready (concurrency %d)", name, concurrency)
        try:
            await running
        except asyncio.CancelledError:
            pass
        finally:
            recovery.cancel()
            for task in draining:
                task.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            runner.db.dispose()
    log.info("worker %s stopped", name)


async def _heartbeat_while_draining(app: procrastinate.App, worker: Worker, settings: ServiceSettings) -> None:
    """Beat for ``worker`` while it drains, until procrastinate unregisters it (``worker_id`` None)."""
    while True:
        await asyncio.sleep(settings.worker_heartbeat_s)
        worker_id = worker.worker_id
        if worker_id is None:
            return
        try:
            await app.job_manager.update_heartbeat(worker_id)
        except Exception:  # the database may be restarting; beat again next time
            log.warning("drain heartbeat of worker %s failed; retrying", worker_id, exc_info=True)


async def _requeue_stalled_jobs(app: procrastinate.App, settings: ServiceSettings) -> None:
    """Put jobs of dead workers back in the queue, now and every few seconds."""
    every = max(1.0, min(10.0, settings.worker_stalled_after_s / 2))
    while True:
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                task_name=TASK_NAME, seconds_since_heartbeat=settings.worker_stalled_after_s
            )
            for job in stalled:
                try:
                    await app.job_manager.retry_job(job)
                    log.warning("job %s of a dead worker put back in the queue", job.id)
                except procrastinate.exceptions.ConnectorException:
                    pass  # another worker re-queued it first
        except Exception:
            log.exception("stalled-job recovery failed; retrying")
        await asyncio.sleep(every)


def _quiet_optuna_notices() -> None:
    """Optuna flags heartbeats as experimental on every storage a job opens; say it once, not per trial."""
    import optuna

    warnings.filterwarnings("once", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("once", category=FutureWarning, module=r"optuna\.")
