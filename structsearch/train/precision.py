"""Mixed precision for the training loops: bfloat16 autocast, where the hardware makes it pay.

``bf16`` runs a model's forward -- and so its backward -- under ``torch.autocast`` with bfloat16:
matrix multiplies and convolutions in bfloat16, reductions and the weights, gradients and optimiser
state in float32. On a CPU with AVX512-BF16 (the shared 2-core EPYC here) a full ``cifar_vit``
training step runs 1.8x faster than float32, and the KD proxy (batch 64, half-width students, data
and teacher-cache overheads included) 1.29x for a ViT and 1.21x for a ResNet-56 student; on a CPU
without bfloat16 instructions it is slower than float32, so ``fp32`` stays every loop's default.
No loss scaling is needed: bfloat16 has float32's exponent range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Imported by study specs, which must validate without importing torch (``structsearch.lazy``).
Precision = Literal["fp32", "bf16"]


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The autocast context of ``precision`` on ``device`` (disabled, a no-op, for ``fp32``)."""
    import torch

    if precision not in ("fp32", "bf16"):  # ProxyConfig is a plain dataclass: nothing validated it
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
