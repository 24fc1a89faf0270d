"""Importance strategies: which channels or heads of the teacher survive in the student.

An importance strategy scores the *units* (channels, heads) shared by a group of tensors and keeps
the best ``k``. L1 magnitude is the default (Li et al., "Pruning Filters for Efficient ConvNets",
2017: filters with small L1 norm contribute little); random selection is the ablation that tells
whether importance matters for a given teacher. Strategies register by name with
:func:`register_importance` (like ``register_family``); a study's ``importance`` names one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from structsearch.pruning.ops import group_channels

#: A tensor and the dimension along which it is indexed by the units being selected.
TensorDim = tuple[Tensor, int]


class Importance(ABC):
    """Scores units and keeps the ``k`` most important ones; ``seed`` serves strategies that draw."""

    name: str

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        """One score per unit; every tensor must have the same size along its dimension."""

    def select(self, tensors: Sequence[TensorDim], k: int) -> Tensor:
        """Indices of the ``k`` best units, in ascending order (so kept channels keep their order)."""
        s = self.scores(tensors)
        if k >= s.numel():
            return torch.arange(s.numel())
        # stable: ties broken by position, so selection is deterministic
        order = torch.sort(s, descending=True, stable=True).indices[:k]
        return torch.sort(order).values

    def select_groups(self, tensors: Sequence[TensorDim], group_size: int, channels: int) -> Tensor:
        """Channel indices of the ``channels // group_size`` best whole groups of ``group_size``
        consecutive channels (a grouped convolution's groups), each group scored over all its channels."""
        views = [(t.unflatten(dim, (-1, group_size)), dim) for t, dim in tensors]
        return group_channels(self.select(views, channels // group_size), group_size)


_IMPORTANCES: dict[str, type[Importance]] = {}

ImportanceT = TypeVar("ImportanceT", bound=type[Importance])


def register_importance(cls: ImportanceT) -> ImportanceT:
    """Class decorator: make an :class:`Importance` available by ``cls.name``."""
    if _IMPORTANCES.setdefault(cls.name, cls) is not cls:
        raise ValueError(f"importance '{cls.name}' is already registered")
    return cls


def get_importance(name: str, seed: int = 0) -> Importance:
    """A registered importance strategy by name (``l1``, ``random``); ``ValueError`` for others."""
    try:
        return _IMPORTANCES[name](seed)
    except KeyError:
        raise ValueError(f"unknown importance '{name}'; use one of {', '.join(_IMPORTANCES)}") from None


@register_importance
class L1Magnitude(Importance):
    """Sum over all tensors of the L1 norm of each unit's weights (the default)."""

    name = "l1"

    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        return unit_sums(tensors, torch.abs)


def unit_sums(tensors: Sequence[TensorDim], elementwise: Callable[[Tensor], Tensor]) -> Tensor:
    """Per unit, the sum of ``elementwise(weight)`` over every weight of the unit in ``tensors``."""
    total: Tensor | None = None
    for t, dim in tensors:
        t = elementwise(t.detach().float()).movedim(dim, 0)
        s = t.reshape(t.shape[0], -1).sum(dim=1)
        total = s if total is None else total + s
    if total is None:
        raise ValueError("importance needs at least one tensor")
    return total


@register_importance
class RandomImportance(Importance):
    """Uniformly random units, seeded: the ablation baseline."""

    name = "random"

    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        t, dim = tensors[0]
        g = torch.Generator().manual_seed(self.seed + t.shape[dim])
        return torch.rand(t.shape[dim], generator=g)
