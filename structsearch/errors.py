"""User-facing errors, and :func:`one_line` that prints any error as one line.

Every error caused by user input (an unknown model, a malformed budget, a spec that does not fit
the model, a missing file) is a :class:`StructsearchError`. The CLI prints ``str(error)`` as one line
and exits with status 2; the API answers ``{"detail": str(error)}`` with the class's ``status``
(422 unless the class says otherwise: :class:`NotFound` 404, :class:`Conflict` 409,
:class:`Unavailable` 503). Anything else is a bug and may show a traceback. Every error class of
the project is defined here.
"""

from __future__ import annotations

import re
from typing import ClassVar

#: How many validation problems :func:`one_line` lists before it counts the rest.
MAX_PROBLEMS = 5
#: How many characters of another error's message :func:`one_line` keeps (SQL errors quote statements).
MAX_CHARS = 400


class StructsearchError(Exception):
    """Base class of errors the user can fix; the message says what is wrong and what to do."""

    #: The HTTP status the API answers with (422: the request is the user's to fix).
    status: ClassVar[int] = 422


class NotFound(StructsearchError):
    """Something the request names (a study, a trial, a candidate within a budget) does not exist."""

    status = 404


class Conflict(StructsearchError):
    """The request clashes with the current state (a name in use, a search that already ended)."""

    status = 409


class Unavailable(StructsearchError):
    """A backing service (the study storage, the job queue) cannot be reached; retry later."""

    status = 503


class UnknownModelError(StructsearchError):
    """A model name that neither timm nor structsearch registers."""


class NoAdapterError(StructsearchError):
    """A model whose family has no search-space adapter."""


class SpecError(StructsearchError):
    """An ArchSpec that is malformed or does not fit its model (the message names the block)."""


class BudgetError(StructsearchError):
    """A budget string that cannot be parsed, or a budget no candidate can meet."""


class NothingWithinBudget(BudgetError, NotFound):
    """No stored candidate meets the budget asked for (404: the query is fine, the answer is empty)."""


class CostError(StructsearchError):
    """The cost counter could not account for every matmul-like operation of a model."""


class DataError(StructsearchError):
    """Missing, corrupt or inconsistent data."""


class CheckpointError(StructsearchError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


class DeviceError(StructsearchError):
    """An unknown device, or a CUDA device this machine does not have."""


class AdmissionError(StructsearchError):
    """The spec is well-formed but not allowed from a client of this service."""


class NameTaken(Conflict):
    """Another search (or API key) already holds this name."""


class CancelRefused(Conflict):
    """The search already reached a final status."""


class SubmitFailed(Unavailable):
    """The spec was fine but the search could not be set up (database or queue trouble)."""


def one_line(error: BaseException) -> str:
    """An error as one line of text, for messages that must fit on one line.

    A validation error (pydantic's, or FastAPI's request validation) becomes ``field: problem;
    field: problem`` (the first :data:`MAX_PROBLEMS`; the request body's own location is left out);
    any other error ``Type: its message`` with line breaks squeezed to spaces (at most
    :data:`MAX_CHARS` of it), or ``Type`` alone when it has no message.
    """
    problems = getattr(error, "errors", None)
    if callable(problems):
        parts = []
        found = list(problems())
        for err in found[:MAX_PROBLEMS]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            msg = re.sub(r"^Value error, ", "", str(err.get("msg", "invalid")))
            parts.append(f"{loc}: {msg}" if loc else msg)
        if len(found) > MAX_PROBLEMS:
            parts.append(f"and {len(found) - MAX_PROBLEMS} more")
        return "; ".join(parts) or type(error).__name__
    text = " ".join(str(error).split())
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class FinetuneError(StructsearchError):
    """A fine-tuning setting or request that cannot work (bad value, untrained trial, ...)."""


class TeachError(StructsearchError):
    """A teacher-training recipe that cannot work (bad field, unreadable file, ...)."""


class ProxyConfigError(StructsearchError):
    """A proxy request that cannot work (a student resolution that feature KD cannot take, ...)."""


class FeatureKDError(StructsearchError):
    """Feature KD was asked for a model (or teacher/student pair) it cannot be applied to."""


class TooMany(StructsearchError):
    """A key is over one of its quotas (active searches, queued trial-steps); retry when some end."""

    status = 429


class TeacherWarning(UserWarning):
    """A teacher that will not teach: e.g. one scoring about chance on the study's validation data."""
