"""Adapter for timm's StarNet: depth per stage and the hidden width of every star block.

StarNet (Ma et al., "Rewrite the Stars", CVPR 2024: a network for mobile devices built on the
element-wise product) is ``stem -> stages.0..3 -> norm -> head``; each stage is a ``Sequential`` of a
stride-2 ``ConvBN`` downsampler followed by its ``Block``\\ s:

    x + dwconv2(g(act(f1(y)) * f2(y))),   y = dwconv(x)

``dwconv``/``dwconv2`` (depthwise 7x7) work on the stage's width, the residual stream, and stay.
What shrinks:

* ``width`` -- the hidden width of the star operation (``mlp_ratio`` x the stream: 3 or 4): the same
  output rows of ``f1`` and ``f2`` (they are multiplied channel by channel) and ``g``'s input
  columns, ranked by all three together. A kept channel computes exactly what it did in the teacher.
* ``keep`` -- every block (the stride and width change in the downsampler, which stays).

Block names are their paths in the model, ``stages.2.1`` for stage 2's first block (index 0 is the
downsampler). Feature KD taps ``stages.0..3``. Subclasses and blocks with other layers are refused
(the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.models.starnet import Block, ConvBN, StarNet
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import is_pointwise
from structsearch.pruning.ops import is_batch_norm, slice_conv, slice_norm
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _pointwise(layer: nn.Module) -> bool:
    """A ``ConvBN`` of one dense 1x1 conv, with or without its BatchNorm."""
    if type(layer) is not ConvBN:
        return False
    parts = dict(layer.named_children())
    conv, bn = parts.get("conv"), parts.get("bn")
    plain_conv = type(conv) is nn.Conv2d and is_pointwise(conv)
    return set(parts) <= {"conv", "bn"} and plain_conv and (bn is None or is_batch_norm(bn))


@register_family
class StarNetFamily(StagedFamily):
    """timm ``StarNet``: drop blocks inside a stage, narrow each block's star operation."""

    name = "starnet"
    description = "StarNet: depth per stage and the star operation's hidden width per block"
    examples = ("starnet_s050", "starnet_s1", "starnet_s4")
    kinds = (StarNet,)
    stage_kinds = (nn.Sequential,)
    blocks_attr = None

    def searched(self, block: nn.Module) -> bool:
        return type(block) is not ConvBN  # the stage's downsampler

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is not Block:
            return False
        if not all(_pointwise(block.get_submodule(n)) for n in ("f1", "f2", "g")):
            return False
        return _conv(block, "f1").out_channels == _conv(block, "f2").out_channels

    def width_base(self, block: nn.Module) -> int:
        return _conv(block, "f1").out_channels

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        f1, f2, g = (_conv(block, n) for n in ("f1", "f2", "g"))
        idx = importance.select([(f1.weight, 0), (f2.weight, 0), (g.weight, 1)], channels)
        for name, conv in (("f1", f1), ("f2", f2)):
            slice_conv(conv, out_idx=idx)
            layer = block.get_submodule(name)
            if hasattr(layer, "bn"):
                slice_norm(layer.get_submodule("bn"), idx)
        slice_conv(g, in_idx=idx)
        return {"channels": idx.tolist()}


def _conv(block: nn.Module, name: str) -> nn.Conv2d:
    """The 1x1 convolution of the block's ``ConvBN`` ``name`` (``f1``, ``f2`` or ``g``)."""
    return cast(nn.Conv2d, block.get_submodule(f"{name}.conv"))
