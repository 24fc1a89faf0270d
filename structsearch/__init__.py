"""structsearch: block-wise structure search for compact students, scored by knowledge distillation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__version__ = "0.1.0"


def load(directory: str | Path) -> nn.Module:
    """Rebuild an exported student (``structsearch export``) in any process."""
    from structsearch.surgery import load_student

    return load_student(directory)
