"""Where tensors live and how many classes a model predicts: the helpers every training loop shares."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Keep whole tensors (training images, preprocessed validation images) on the device up to this
#: many bytes; above it they stay on the CPU and move batch by batch (CIFAR-10's 50k images: 150 MB).
ON_DEVICE_LIMIT = 1 << 30


def fits_on_device(t: Tensor, element_size: int | None = None) -> bool:
    """Whether ``t`` (at ``element_size`` bytes per element, default its own) is within :data:`ON_DEVICE_LIMIT`."""
    return t.numel() * (element_size or t.element_size()) <= ON_DEVICE_LIMIT


def num_classes_of(model: nn.Module) -> int | None:
    """The classifier's output count as the model declares it (timm's ``num_classes``), if it does."""
    n = getattr(model, "num_classes", None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def probe_classes(model: nn.Module, x: Tensor) -> int:
    """The width of the model's output on the input batch ``x`` (for models that declare no ``num_classes``)."""
    with torch.inference_mode():
        return int(model(x).shape[-1])
