"""Where studies live: one resolution rule for the CLI, the worker and the API.

Order: an explicit ``--storage URL``, then ``$STRUCTSEARCH_STORAGE``, then the embedded default,
a SQLite file at ``$STRUCTSEARCH_HOME/studies.db`` (``STRUCTSEARCH_HOME`` defaults to
``~/.structsearch``). Any SQLAlchemy URL works (``postgresql+psycopg://...`` for the service).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna

from structsearch.errors import NotFound, Unavailable, one_line
from structsearch.paths import home


def default_storage_url() -> str:
    return f"sqlite:///{home() / 'studies.db'}"


def resolve_storage_url(url: str | None = None) -> str:
    """The storage URL to use (see the module docstring for the order)."""
    return url or os.environ.get("STRUCTSEARCH_STORAGE") or default_storage_url()


def open_storage(
    url: str | None = None, create: bool = True, heartbeat_interval: int | None = None
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; heartbeats (for dead-worker detection) when an interval is given.

    With ``create=False`` (read-only commands such as ``best``) a SQLite file that does not exist
    is an error instead of a new empty database. A storage that cannot be opened is
    :class:`Unavailable`; its message leaves the URL out (it may hold a password).
    """
    url = resolve_storage_url(url)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        if not create and not path.is_file():
            raise NotFound(f"storage {url} does not exist; run `structsearch search` first or pass --storage")
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict = {}
    if heartbeat_interval:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8; the replacement for the deprecated callback
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": heartbeat_interval * 3,
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for bad URLs / servers
        raise Unavailable(f"cannot open the study storage: {one_line(e).replace(url, '<storage URL>')}") from None
