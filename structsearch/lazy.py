"""Package attributes imported on first use (PEP 562's module ``__getattr__``).

Reading results -- ``structsearch best``/``pareto``/``studies``, a study spec's validation -- needs
neither torch nor timm, whose imports take 2-4 s of every command's start; packages that re-export
torch-backed names load those modules only when a name is first used. Each package still imports
the names under ``TYPE_CHECKING`` so type checkers and editors see them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<where[name]>`` to get ``name``."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
