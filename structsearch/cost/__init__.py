"""The cost model: MACs, parameters and budgets, in the units every budget in the product uses.

Convention: fvcore's, where **one multiply-add counts as one flop** -- i.e. "FLOPs" here are MACs.
That is the convention of timm's model tables and most pruning/NAS papers, so a ``"300M"`` FLOPs
budget means "about MobileNetV2-1.0 at 224 px" (0.31 G) and ResNet-50 is 4.11 G. PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` counts **2** flops per multiply-add (and skips
normalisation layers), so its numbers are about twice ours; never mix the two. Every
:class:`CostReport` carries its convention and counter version for that reason.

fvcore alone misses fused attention (``scaled_dot_product_attention``, used by timm ViTs); the
counter adds a handler for it and raises :class:`~structsearch.errors.CostError` instead of
under-counting when any other matmul-like op goes uncounted.

Budgets (``"300M"``, ``"1.2G"``, ``"850k"``, ``"5ms"``, ``"50MB"``, ``"60%"`` of the teacher) are
parsed only by :func:`parse_budget`.

Latency (:func:`measure_latency`) and peak activation memory (:func:`measure_memory`) are
*measured*, not estimated, so each report names the device, runtime and method that produced it;
a latency figure without its device is meaningless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structsearch.cost.budget import Budget, format_bytes, format_count, format_ms, parse_budget
from structsearch.lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.cost.counter import CostReport, default_input_size, measure_cost
    from structsearch.cost.latency import LatencyReport, device_name, measure_latency
    from structsearch.cost.memory import MemoryReport, measure_memory

#: Names whose modules import torch, loaded on first use: reading budgets and stored figures
#: (``structsearch best``, the API's read routes) must not pay torch's import time.
__getattr__ = lazy_attributes(
    __name__,
    {
        "CostReport": "counter",
        "default_input_size": "counter",
        "measure_cost": "counter",
        "LatencyReport": "latency",
        "device_name": "latency",
        "measure_latency": "latency",
        "MemoryReport": "memory",
        "measure_memory": "memory",
    },
)


__all__ = [
    "Budget",
    "CostReport",
    "LatencyReport",
    "MemoryReport",
    "default_input_size",
    "device_name",
    "format_bytes",
    "format_count",
    "format_ms",
    "measure_cost",
    "measure_latency",
    "measure_memory",
    "parse_budget",
]
