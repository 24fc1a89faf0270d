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

from pydantic import Field, SecretStr, field_validator
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
    #: Fronts and bests (GET .../pareto, .../best) without an API key. Everything else -- specs,
    #: trial lists, artifacts, listing, submitting, cancelling -- always needs the owner's (or an
    #: admin) key, whatever this says.
    open_reads: bool = False
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

    # --- Bounded work (issue 13): what one request, and one key, may ask of the machines. ---
    #: Largest teacher (and student base), in parameters, counted on the meta device before
    #: anything is allocated. 200M: a ViT-L is 300M, a ResNet-50 25M.
    max_model_params: int = Field(default=200_000_000, ge=1)
    #: Largest ``num_classes`` a model kwarg may ask for (a 6,000,000-class head alone is 12 GB).
    max_num_classes: int = Field(default=100_000, ge=2)
    #: Largest image side anywhere in a spec (``data.input_size``, ``resolutions``, ``img_size``,
    #: ``imagefolder:...?size=HxW``), pixels.
    max_image_side: int = Field(default=1024, ge=8)
    #: ``measure`` caps: batch, timed repeats and warm-up runs per candidate. Threads are capped at
    #: the API machine's CPU count.
    max_measure_batch: int = Field(default=64, ge=1)
    max_measure_repeats: int = Field(default=200, ge=1)
    max_measure_warmup: int = Field(default=50, ge=0)
    #: ``proxy`` caps: steps and batch size of one trial's KD run.
    max_proxy_steps: int = Field(default=20_000, ge=1)
    max_proxy_batch: int = Field(default=1024, ge=1)
    #: Largest ``teacher.train_epochs`` (a teacher trained once per machine before any trial).
    max_train_epochs: int = Field(default=200, ge=0)
    #: Planning a submitted spec (building its models, counting their cost, measuring the smallest
    #: student) runs in a child process with this much memory on top of the interpreter, MB, ...
    planning_memory_mb: int = Field(default=4096, ge=16)
    #: ... and this long, seconds; past either the submission is refused with a 422.
    planning_timeout_s: float = Field(default=60.0, gt=0)
    #: Searches one key may have queued or running at once (admin keys: no limit).
    max_active_searches_per_key: int = Field(default=4, ge=1)
    #: Remaining trials x proxy steps one key may have outstanding, summed over its active searches (admin
    #: keys: no limit). 1,000,000 is e.g. 50 trials of 20,000 steps.
    max_trial_steps_per_key: int = Field(default=1_000_000, ge=1)
    #: Largest request body, bytes; a larger one is refused with a 413 before it is read.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    # --- The dashboard (issue 13): optuna-dashboard can delete, rename and `tell`, so it connects
    # through a role that can only read Optuna's tables. ---
    #: Password of that role; ``structsearch db upgrade`` creates (or updates) the role only when
    #: this is set, and ``structsearch dashboard`` then connects with it.
    dashboard_password: SecretStr | None = None
    #: Name of the read-only role.
    dashboard_role: str = Field(default="structsearch_dashboard", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    @field_validator("dashboard_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    def dashboard_url(self) -> str | None:
        """The database URL as the read-only dashboard role; None when no password is configured."""
        if self.dashboard_password is None:
            return None
        from sqlalchemy import make_url

        url = make_url(self.database_url).set(
            username=self.dashboard_role, password=self.dashboard_password.get_secret_value()
        )
        return url.render_as_string(hide_password=False)

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

    # --- batch x image size (issue 13): the batch and image-side caps alone allow 1024 images of
    # 1024 x 1024 px. ---
    #: Largest batch x height x width, pixels, of a ``proxy`` or ``measure`` batch at the largest
    #: image size a spec names. 2**26: e.g. 1024 images of 256 x 256 px, or 256 of 512 x 512.
    max_batch_pixels: int = Field(default=1 << 26, ge=1)

    # -- progress stream (GET /searches/{id}/events; issue 14) ----------------------------------
    #: How often an open stream looks for changed trials and a changed status, seconds.
    events_poll_s: float = Field(default=1.0, gt=0, le=60)
    #: A stream ends after this long (the client reconnects with Last-Event-ID), seconds.
    events_max_s: float = Field(default=600.0, gt=0, le=86_400)

    # -- detection studies (issue 16) ----------------------------------------------------------------
    #: Pixels (canvases x height x width) one ``mosaic:`` data source may generate in memory
    #: (3 bytes each): the default, 2^29, is 1.6 GB; the CIFAR mosaic study's training set is 37M.
    max_mosaic_pixels: int = Field(default=1 << 29, ge=1)

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
