"""Where studies live: one resolution rule for the CLI, the worker and the API.

Order: an explicit ``--storage URL``, then ``$STRUCTSEARCH_STORAGE``, then the embedded default,
a SQLite file at ``$STRUCTSEARCH_HOME/studies.db`` (``STRUCTSEARCH_HOME`` defaults to
``~/.structsearch``). Any SQLAlchemy URL works (``postgresql+psycopg://...`` for the service).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import quote, quote_plus

import optuna

from structsearch.errors import NotFound, Unavailable, one_line
from structsearch.paths import home


def default_storage_url() -> str:
    return f"sqlite:///{home() / 'studies.db'}"


def resolve_storage_url(url: str | None = None) -> str:
    """The storage URL to use (see the module docstring for the order)."""
    return url or os.environ.get("STRUCTSEARCH_STORAGE") or default_storage_url()


def safe_url(url: str) -> str:
    """``url`` as it may be shown (messages, logs): the password replaced by ``***``.

    A string SQLAlchemy cannot parse is not shown at all: it may be a URL with a typo that still
    holds a password.
    """
    from sqlalchemy import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError (bad port), ...
        return "<storage URL>"


def hide_secrets(text: str, url: str) -> str:
    """``text`` with ``url`` shown as :func:`safe_url` and its password (as written, or URL-encoded)
    replaced by ``***`` wherever a driver echoed it."""
    text = text.replace(url, safe_url(url))
    password = _password(url)
    if password:
        for form in sorted({password, quote(password, safe=""), quote_plus(password)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


def _password(url: str) -> str | None:
    from sqlalchemy import make_url

    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001
        # unparseable: take what lies between "user:" and "@" of the authority, if anything
        authority = url.partition("://")[2].rpartition("@")[0]
        return authority.partition(":")[2] or None


def open_storage(
    url: str | None = None, create: bool = True, heartbeat_interval: int | None = None
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; heartbeats (for dead-worker detection) when an interval is given.

    With ``create=False`` (read-only commands such as ``best``) a SQLite file that does not exist
    is an error instead of a new empty database. A storage that cannot be opened is
    :class:`Unavailable`; its message leaves the URL and its password out.
    """
    url = resolve_storage_url(url)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        if not create and not path.is_file():
            raise NotFound(f"storage {safe_url(url)} does not exist; run `structsearch search` first or pass --storage")
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
        with warnings.catch_warnings():  # heartbeat_interval: "experimental" as above
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for bad URLs / servers
        raise Unavailable(
            f"cannot open the study storage: {hide_secrets(one_line(e), url).replace(safe_url(url), '<storage URL>')}"
        ) from None


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's retry callback, re-queue) the trials whose heartbeats stopped.

    Optuna's ``fail_stale_trials`` without its "experimental" warning (the heartbeats have been
    stable since Optuna 2.9), so a search's output stays free of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
