"""Importance strategies: which channels or heads of the teacher survive in the student.

An importance strategy scores the *units* (channels, heads) shared by a group of tensors and keeps
the best ``k``. L1 magnitude is the default (Li et al., "Pruning Filters for Efficient ConvNets",
2017: filters with small L1 norm contribute little); random selection is the ablation that tells
whether importance matters for a given teacher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

#: A tensor and the dimension along which it is indexed by the units being selected.
TensorDim = tuple[Tensor, int]


class Importance(ABC):
    """Scores units and keeps the ``k`` most important ones."""

    name: str

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


class L1Magnitude(Importance):
    """Sum over all tensors of the L1 norm of each unit's weights (the default)."""

    name = "l1"

    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        total: Tensor | None = None
        for t, dim in tensors:
            t = t.detach().float().abs().movedim(dim, 0)
            s = t.reshape(t.shape[0], -1).sum(dim=1)
            total = s if total is None else total + s
        if total is None:
            raise ValueError("importance needs at least one tensor")
        return total


class RandomImportance(Importance):
    """Uniformly random units, seeded: the ablation baseline."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        t, dim = tensors[0]
        g = torch.Generator().manual_seed(self.seed + t.shape[dim])
        return torch.rand(t.shape[dim], generator=g)


def get_importance(name: str, seed: int = 0) -> Importance:
    """Importance strategy by name (``l1`` or ``random``)."""
    from structsearch.errors import StructsearchError

    if name == "l1":
        return L1Magnitude()
    if name == "random":
        return RandomImportance(seed)
    raise StructsearchError(f"unknown importance '{name}'; use 'l1' or 'random'")
