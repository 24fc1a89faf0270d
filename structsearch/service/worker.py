"""``structsearch worker``: a procrastinate worker running trial jobs, plus dead-worker recovery.

Start as many as you like, on as many machines as share the database. Each takes queued trial
jobs (see :mod:`structsearch.service.jobs`) ``concurrency`` at a time.

Stopping: SIGTERM or SIGINT stops taking jobs; a job mid-trial finishes its trial (procrastinate's
graceful shutdown waits for it), a job still waiting for a slot is handed back to the queue.

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

from structsearch.service.database import Database, libpq_url
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
    app = make_queue_app(procrastinate.PsycopgConnector(conninfo=libpq_url(settings.database_url)))
    loop = asyncio.get_running_loop()
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                name=name,
                concurrency=concurrency,
                install_signal_handlers=False,  # ours below: they also tell waiting jobs to hand back
                additional_context={"runner": runner},
                update_heartbeat_interval=settings.worker_heartbeat_s,
                stalled_worker_timeout=settings.worker_stalled_after_s,
                fetch_job_polling_interval=2.0,
            ),
            name="procrastinate worker",
        )

        def stop() -> None:
            log.info("worker %s stopping: finishing running trials", name)
            runner.stopping.set()
            worker.cancel()  # procrastinate then stops fetching and waits for running jobs

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        recovery = asyncio.create_task(_requeue_stalled_jobs(app, settings), name="stalled-job recovery")
        log.info("worker %s ready (concurrency %d)", name, concurrency)
        try:
            await worker
        except asyncio.CancelledError:
            pass
        finally:
            recovery.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            runner.db.dispose()
    log.info("worker %s stopped", name)


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
