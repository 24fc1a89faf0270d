"""The family registry: adapters register by decorator and are found by model.

Mirrors timm's ``register_model``: ``@register_family`` on a :class:`Family` subclass makes it
available by name and lets :func:`family_for` find it for a built model.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

from structsearch.errors import NoAdapterError
from structsearch.space.base import Family, Space
from structsearch.space.spec import _freeze

_FAMILIES: dict[str, Family] = {}

F = TypeVar("F", bound=type[Family])


def register_family(cls: F) -> F:
    """Class decorator: register one instance of a :class:`Family` under ``cls.name``."""
    if cls.name in _FAMILIES:
        raise ValueError(f"family '{cls.name}' is already registered")
    _FAMILIES[cls.name] = cls()
    return cls


def list_families() -> list[Family]:
    """Registered adapters, in registration order."""
    return list(_FAMILIES.values())


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise NoAdapterError(f"no family named '{name}'; known families: {', '.join(_FAMILIES)}") from None


def family_for(model: nn.Module) -> Family:
    """The adapter that handles ``model``, or a clear error listing the supported families."""
    for family in _FAMILIES.values():
        if family.handles(model):
            return family
    reasons = [(f.name, r) for f in _FAMILIES.values() if isinstance(model, f.kinds) and (r := f.unsupported(model))]
    what = f"{type(model).__name__} models"
    if reasons:  # a kind of model some family knows, built with a part it cannot narrow or drop
        what = f"this {type(model).__name__} model: the {reasons[0][0]} family cannot narrow or drop {reasons[0][1]}"
    raise NoAdapterError(
        f"no search-space adapter for {what}; supported families: {', '.join(_FAMILIES)} (see `structsearch models`)"
    )


def space_of(model: nn.Module, model_name: str, model_kwargs: dict[str, Any] | None = None) -> Space:
    """The search space of a built base model."""
    family = family_for(model)
    return Space(
        model=model_name,
        model_kwargs=_freeze(model_kwargs or {}),
        family=family.name,
        stages=family.describe(model),
    )
