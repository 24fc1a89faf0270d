"""BatchNorm recalibration (after surgery, before a fine-tune).

A student inherits its BatchNorm running statistics from the teacher, but they describe the
teacher's activations: once blocks are dropped or channels removed, the inputs every later layer
sees change, so the inherited means and variances are off and an inherited student evaluates far
worse than its weights deserve. Re-estimating the statistics on a few training batches (Li et al.,
"EagleEye", ECCV 2020, call this adaptive BN) fixes that before any training step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def recalibrate_bn(model: nn.Module, x_batches: Iterable[Tensor]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``x_batches``.

    Uses a cumulative moving average (``momentum=None``), so the result is the plain average over
    the batches, independent of their order. Only BatchNorm buffers change: no gradients, no weight
    updates. The model's train/eval mode and each layer's momentum are restored afterwards. Returns
    the number of batches used; with no BatchNorm or no batches the model is left untouched.
    """
    norms = batchnorms(model)
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    used = 0
    try:
        with torch.no_grad():
            for x in x_batches:
                if used == 0:  # reset only once there is data to re-estimate from
                    for m in norms:
                        m.reset_running_stats()
                        m.momentum = None
                    model.train()
                model(x)
                used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used
