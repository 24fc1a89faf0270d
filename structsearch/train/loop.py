"""The one optimisation step loop: the proxy, the fine-tune, teacher training and synthesis run it.

The loop owns only what every caller does the same way -- compute the loss, clear the gradients,
back-propagate, step the optimizer and the schedule, count steps. Everything else is a hook:
``loss_fn`` is the objective (KD, cross-entropy, feature hints, image priors) and ``after_step``
does the caller's bookkeeping (running statistics, progress, evaluation, checkpoints, clipping) and
may end the run early by returning ``True``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor

B = TypeVar("B")
#: ``loss_fn(batch) -> (loss, aux)``: ``aux`` (logits, loss terms, ...) is handed to ``after_step``.
LossFn = Callable[[B], tuple[Tensor, Any]]
#: ``after_step(step, batch, loss, aux) -> stop?``, called after each optimizer step (``step`` counts from 1).
AfterStep = Callable[[int, B, Tensor, Any], bool | None]


def run_steps(
    batches: Iterable[B],
    loss_fn: LossFn[B],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    after_step: AfterStep[B] | None = None,
    before_step: Callable[[], None] | None = None,
    start_step: int = 0,
) -> int:
    """One optimizer step per batch of ``batches``; returns the number of the last step taken.

    Steps are numbered on from ``start_step`` (a resumed run passes the checkpoint's step).
    ``before_step()`` runs before each step and may raise to stop the run there (a trial's
    deadline, a cancelled search).
    """
    step = start_step
    for batch in batches:
        if before_step is not None:
            before_step()
        loss, aux = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        step += 1
        if after_step is not None and after_step(step, batch, loss, aux):
            break
    return step
