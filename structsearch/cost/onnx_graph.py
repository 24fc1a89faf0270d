"""Writing a model's forward as an ONNX graph: the one exporter call behind ``export --onnx`` and
onnxruntime latency.

torch.onnx's TorchScript exporter handles every family here except timm's ``Eva`` ViTs (DINOv3,
EVA-02: their attention hands ``scaled_dot_product_attention`` an ``is_causal`` that tracing turns
into a tensor). The dynamo exporter (``onnxscript``, in the ``onnx`` extra) handles those, but takes
seconds where TorchScript takes a fraction of one, so it is the fallback, not the default.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def export_graph(model: nn.Module, x: torch.Tensor, path: Path, output: str, dynamic_batch: bool = False) -> None:
    """Write ``model``'s forward on ``x`` to ``path`` (input ``input``, output ``output``; the batch
    dimension dynamic when asked). Raises the TorchScript exporter's error when both exporters fail."""
    kwargs: dict[str, Any] = dict(input_names=["input"], output_names=[output])
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, output: {0: "batch"}}
    with warnings.catch_warnings():  # the exporters' notices concern them, not the model
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
            return
        except Exception as e:  # noqa: BLE001 -- any exporter failure: try the other exporter
            torchscript_error = e
        quiet = logging.getLogger("onnxscript")  # its graph optimiser logs a warning per unfolded op
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, **kwargs)
        except Exception:  # noqa: BLE001 -- report the first exporter's (shorter, usually clearer) error
            raise torchscript_error from None
        finally:
            quiet.setLevel(level)
