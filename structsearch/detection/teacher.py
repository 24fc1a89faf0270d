"""Training a detection teacher from scratch when a detection study has no checkpoint.

The detection counterpart of :func:`structsearch.teachers.fit_teacher`, and cached the same way
(:func:`structsearch.teachers.trained_teacher` with ``fit=fit_detector``): torchvision's FCOS loss
(focal classification, GIoU boxes, centerness) against the ground-truth boxes, AdamW under a
one-cycle schedule (it converges in a few epochs from random weights, where SGD needs a tuned
warm-up), no augmentation (the mosaic canvases are random already; a flip would change digits).
Deterministic on CPU for a given seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from structsearch.data import Preprocess
from structsearch.detection.data import DetectionData
from structsearch.models.detector import Detector
from structsearch.teachers import fit_epochs
from structsearch.train import make_optimizer


def fit_detector(
    model: nn.Module,
    data: DetectionData,
    train_idx: torch.Tensor,
    preprocess: Preprocess,
    epochs: int,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 2e-3,
    **_ignored: Any,
) -> nn.Module:
    """Train ``model`` (a :class:`Detector`) on ``data[train_idx]`` for ``epochs`` epochs; returns it in eval mode."""
    assert isinstance(model, Detector)
    batch_size = min(batch_size, len(train_idx))
    opt = make_optimizer(model.parameters(), "adamw", lr, weight_decay=1e-4)
    targets = data.targets(train_idx)

    def loss_fn(idx: torch.Tensor, _g: torch.Generator) -> torch.Tensor:
        return model.loss(preprocess(data.x[train_idx[idx]]), [targets[int(i)] for i in idx])

    steps = max(1, epochs * (len(train_idx) // batch_size))
    return fit_epochs(model, loss_fn, len(train_idx), epochs, seed, batch_size, opt, steps, pct_start=0.15)
