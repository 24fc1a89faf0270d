"""Service configuration, read from ``STRUCTSEARCH_*`` environment variables (and ``.env``).

One object is built by the CLI (``structsearch serve | worker | db | apikey | dashboard``) and
passed down: the database, the data roots and the artifacts folder (workers hand it to
``run_search``) are never read from the environment again, so tests can build settings directly.
Caches (trained teachers, teacher outputs) stay under each process's ``$STRUCTSEARCH_HOME``.
Only the process environment is read (no ``.env`` file here: the repository's ``.env`` holds
docker-compose's defaults, which must not leak into a local ``structsearch serve``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from structsearch.paths import artifacts_dir
from structsearch.search.storage import resolve_storage_url


def _default_database_url() -> str:
    # The CLI's storage rule (STRUCTSEARCH_STORAGE, else the SQLite file) so that the service and
    # `structsearch best --storage` agree on where studies are when only one variable is set.
    return resolve_storage_url(None)


class ServiceSettings(BaseSettings):
    """Everything the API, the workers and the migrations need to know."""

    model_config = SettingsConfigDict(env_prefix="STRUCTSEARCH_", extra="ignore")

    #: SQLAlchemy URL of the database holding our tables, Optuna's and procrastinate's
    #: (``postgresql+psycopg://user:pw@host/db``; workers and the queue need PostgreSQL).
    database_url: str = Field(default_factory=_default_database_url)
    #: Where workers write trained students and the API reads them for download.
    artifacts: Path = Field(default_factory=artifacts_dir)
    #: Reads (GET) without an API key; submitting and cancelling always need one.
    open_reads: bool = True
    #: Directories that file paths in submitted specs (checkpoints, npz / imagefolder /
    #: torchvision data) must lie in; comma- or ``os.pathsep``-separated in the environment.
    #: Empty: only file-less data (``digits``) can be submitted.
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: Largest ``trials`` a submitted spec may ask for (one queued job per trial).
    max_trials: int = Field(default=1000, ge=1)
    #: Largest data-free set (``synthetic:N?iters=K``) a spec may ask for, in images x iterations:
    #: synthesis runs on a worker before any trial, and 2048 x 2000 (the DeepInversion paper's
    #: CIFAR setting) is about 40 GPU-minutes.
    max_synthesis_work: int = Field(default=2048 * 2000, ge=1)
    #: Optuna heartbeat of a running trial, seconds; a trial silent for 3x this is failed and retried.
    trial_heartbeat_s: int = Field(default=10, ge=1)
    #: How often a worker tells the queue it is alive, seconds.
    worker_heartbeat_s: float = Field(default=10.0, gt=0)
    #: A worker silent this long is dead: its jobs are put back in the queue, seconds.
    worker_stalled_after_s: float = Field(default=60.0, gt=0)
    #: Studies whose finished trials the API keeps in memory (0 turns the cache off).
    study_cache_size: int = Field(default=64, ge=0)

    # -- faults: retries and deadlines of trials (see structsearch.service.faults) --------------
    #: A search fails after this many of its trials failed in a row for a reason that is not the
    #: user's (CUDA out of memory, a full disk, the database restarting); until then each failed
    #: trial's job is retried, with backoff, and runs a new trial.
    max_consecutive_failures: int = Field(default=3, ge=1)
    #: Backoff of a retried job: ``retry_wait_s * 2**attempts`` seconds, at most ``retry_max_wait_s``.
    retry_wait_s: float = Field(default=5.0, ge=0)
    retry_max_wait_s: float = Field(default=300.0, ge=0)
    #: A job that has run this many times fails its search whatever the reason (a safety valve: the
    #: failures-in-a-row limit normally ends a hopeless search first).
    job_max_attempts: int = Field(default=20, ge=1)
    #: Seconds a trial may run before it is failed (checked at every training step). Unset: per
    #: search, ``max(600, 10 x proxy steps x seconds per step)``, the step time measured on the
    #: search's trained trials (1 s assumed before the first).
    trial_deadline_s: float | None = Field(default=None, gt=0)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            parts = [p.strip() for chunk in v.split(",") for p in chunk.split(os.pathsep)]
            return [p for p in parts if p]
        return v

    @field_validator("data_roots")
    @classmethod
    def _resolve_roots(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in v]

    @field_validator("artifacts")
    @classmethod
    def _resolve_artifacts(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    def with_database(self, url: str | None) -> ServiceSettings:
        """A copy using ``url`` (a ``--storage`` flag) instead of the configured database."""
        return self if not url else self.model_copy(update={"database_url": url})

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")
