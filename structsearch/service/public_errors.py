"""What the service tells clients about an error: the project's own one-line messages, nothing raw.

Stored errors (``ss_searches.error``) and response bodies are read by clients. The text of a
driver's, Optuna's or torch's exception may hold the database URL with its password, host and user
names, SQL statements or server paths, so it never reaches them: a :class:`StructsearchError`
carries a message written for the user and is shown as such; anything else becomes a fixed line
that points at the operator's log, where :func:`log_error` writes the real error (the storage
password hidden).
"""

from __future__ import annotations

import logging
import traceback

from structsearch.errors import StructsearchError, Unavailable, one_line
from structsearch.search.storage import hide_secrets

#: Stored and returned for an error that is not the project's own (a bug, a full disk, a CUDA fault).
WORKER_ERROR = "a worker error stopped this search; the operator's log has the details"
#: Stored and returned when the database or the queue could not be reached: the operator's to fix,
#: and the driver's text names hosts and users.
STORAGE_ERROR = "the service database could not be reached; the operator's log has the details"


def public_error(error: BaseException, fallback: str = WORKER_ERROR) -> str:
    """The one line a client may see for ``error``."""
    if isinstance(error, Unavailable):
        return STORAGE_ERROR
    if isinstance(error, StructsearchError):
        return one_line(error)
    return fallback


def log_error(log: logging.Logger, what: str, error: BaseException, url: str) -> None:
    """Log ``error`` with its traceback for the operator, with the storage ``url``'s password hidden."""
    text = "".join(traceback.format_exception(error)).rstrip()
    log.error("%s: %s", what, hide_secrets(text, url))
