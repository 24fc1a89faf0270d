"""Plain top-1 evaluation of a model on in-memory uint8 images (the ``structsearch eval`` command)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from structsearch.data import Preprocess


def predict(model: nn.Module, x_uint8: Tensor, preprocess: Preprocess, batch_size: int, device: torch.device) -> Tensor:
    """Top-1 class of every image (CPU int64), preprocessing batch by batch in eval mode."""
    model.eval().to(device)
    preds = []
    with torch.inference_mode():
        for start in range(0, x_uint8.shape[0], batch_size):
            # NHWC: several times faster CNN inference on CPU than NCHW (measured on the CIFAR ResNets)
            x = preprocess(x_uint8[start : start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
            preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def top1(
    model: nn.Module, x_uint8: Tensor, y: Tensor, preprocess: Preprocess, batch_size: int, device: torch.device
) -> float:
    """Top-1 accuracy in percent."""
    if len(y) == 0:
        return float("nan")
    return 100.0 * float((predict(model, x_uint8, preprocess, batch_size, device) == y.cpu()).double().mean())
