"""Where structsearch keeps its files: one leaf module every layer may import.

``$STRUCTSEARCH_HOME`` (default ``~/.structsearch``) holds the embedded studies database, cached
teachers and teacher outputs, trial artifacts and fine-tune runs. The service passes its own
settings down instead of reading the environment again (see ``ServiceSettings``).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "STRUCTSEARCH_HOME"


def home() -> Path:
    """structsearch's data directory: studies, cached teachers and teacher outputs, artifacts."""
    return Path(os.environ.get(HOME_ENV, Path.home() / ".structsearch")).expanduser()


def artifacts_dir() -> Path:
    """Where trained students of every trial are kept (``$STRUCTSEARCH_ARTIFACTS`` overrides)."""
    return Path(os.environ.get("STRUCTSEARCH_ARTIFACTS", home() / "artifacts")).expanduser()
