"""User-facing errors.

Every error caused by user input (an unknown model, a malformed budget, a spec that does not fit
the model, a missing file) is a :class:`StructsearchError`. The CLI prints ``str(error)`` as one line
and exits with status 2; the API turns it into a 4xx JSON body. Anything else is a bug and may
show a traceback.
"""

from __future__ import annotations


class StructsearchError(Exception):
    """Base class of errors the user can fix; the message says what is wrong and what to do."""


class UnknownModelError(StructsearchError):
    """A model name that neither timm nor structsearch registers."""


class NoAdapterError(StructsearchError):
    """A model whose family has no search-space adapter."""


class SpecError(StructsearchError):
    """An ArchSpec that is malformed or does not fit its model (the message names the block)."""


class BudgetError(StructsearchError):
    """A budget string that cannot be parsed, or a budget no candidate can meet."""


class CostError(StructsearchError):
    """The cost counter could not account for every matmul-like operation of a model."""


class DataError(StructsearchError):
    """Missing, corrupt or inconsistent data."""


class CheckpointError(StructsearchError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""
