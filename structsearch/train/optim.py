"""Optimizers (timm's factory) and the learning-rate schedule every training loop shares.

:func:`make_optimizer` maps this project's optimizer names onto timm's
:func:`timm.optim.create_optimizer_v2`, which builds the plain torch optimizers (``sgd`` is SGD with
heavy-ball momentum, timm's ``momentum``; ``nesterov`` is timm's ``sgd``). Parameters are passed
as a list, so timm applies weight decay to all of them, as the loops always did.

:class:`WarmupCosine` is the one schedule: an optional linear warm-up, then cosine decay to 0. It
computes ``base_lr * (step + 1) / warmup`` and ``factor * base_lr`` literally, so the rates are
bit-identical to the hand-written schedules it replaced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from timm.optim import create_optimizer_v2
from torch import Tensor

#: The optimizers a study, the proxy and the fine-tune can name.
OptimizerName = Literal["sgd", "adamw"]
#: Our names -> timm's.
_TIMM_NAME = {"sgd": "momentum", "nesterov": "sgd", "adamw": "adamw", "adam": "adam"}


def make_optimizer(
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    name: str,
    lr: float,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """``name`` (``sgd``, ``nesterov``, ``adamw`` or ``adam``) over ``params`` through timm's factory.

    ``params`` may be parameter groups (dicts with their own ``weight_decay``, as the teacher trainer uses);
    ``momentum`` applies to the SGD variants only; other ``kwargs`` (``betas``, ``eps``) go to the optimizer.
    """
    if name not in _TIMM_NAME:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(_TIMM_NAME)}")
    if name in ("sgd", "nesterov"):
        kwargs["momentum"] = momentum
    listed: list[Any] = list(params)  # tensors or parameter groups
    return create_optimizer_v2(listed, opt=_TIMM_NAME[name], lr=lr, weight_decay=weight_decay, **kwargs)


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up over ``warmup`` steps, then cosine decay from the base rate to 0 at step ``total``.

    Step ``s`` (0-based, the rate of the ``s``-th optimizer step) gets ``base * (s + 1) / warmup``
    while ``s < warmup``, then ``0.5 * (1 + cos(pi * t / span)) * base`` with ``t = min(s - warmup,
    span)`` and ``span = max(1, total - warmup)``; past ``total`` the rate stays 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: int = 0) -> None:
        self.total = total
        self.warmup = warmup
        super().__init__(optimizer)

    def rate(self, step: int, base: float) -> float:
        """The learning rate of step ``step`` for base rate ``base``."""
        if step < self.warmup:
            return base * (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span)) * base

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self.rate(self.last_epoch, float(base)) for base in self.base_lrs]
