"""Adapter for timm's ResNet-V2 (pre-activation ResNets and BiT): depth per stage and the inner width
of every block.

timm's ``ResNetV2`` is ``stem -> stages.0..3 -> norm -> head``; each ``ResNetStage`` is ``blocks``, a
``Sequential`` whose first block strides and widens through its ``downsample``. A pre-activation
bottleneck is ``shortcut + conv3(norm3(conv2(norm2(conv1(norm1(x))))))`` (``PreActBasic``: two 3x3
convs). What shrinks:

* ``width`` -- the channels between the convs: ``conv1``'s outputs (with the norm on them and
  ``conv2``'s inputs) and, in a bottleneck, ``conv2``'s outputs the same way; each side keeps its own
  most important channels, as in a ResNet bottleneck. BiT's GroupNorms keep whole groups (the
  block's ``unit``), so each kept group normalises exactly as in the teacher. BiT's weight-standardised
  convs (``StdConv2d``) standardise each filter over its inputs, so a filter that loses inputs is
  re-standardised: a narrowed BiT block only approximates the teacher's (the identity is exact, and
  the distillation proxy recovers the rest).
* ``keep`` -- a block without ``downsample`` (every one but a stage's first).

The stage widths, ``norm1`` of a pre-activation block (on its input) and the stem stay. Feature KD
taps ``stages.0..3``. Grouped convs, other norms (EvoNorm, FRN) and timm's non-pre-activation
``Bottleneck`` are refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.layers import StdConv2d
from timm.models.resnetv2 import PreActBasic, PreActBottleneck, ResNetStage, ResNetV2
from torch import nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import is_batch_norm, slice_conv, slice_norm
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily

#: Per block type, its narrowed widths: (the conv producing them, the norm on them, the conv reading them).
CHAINS: dict[type[nn.Module], tuple[tuple[str, str, str], ...]] = {
    PreActBasic: (("conv1", "norm2", "conv2"),),
    PreActBottleneck: (("conv1", "norm2", "conv2"), ("conv2", "norm3", "conv3")),
}


def _dense(conv: nn.Module) -> bool:
    return type(conv) in (nn.Conv2d, StdConv2d) and cast(nn.Conv2d, conv).groups == 1


def _group_size(norm: nn.Module) -> int | None:
    """Channels per group of a GroupNorm, 1 for a BatchNorm, None for norms that cannot be sliced."""
    if is_batch_norm(norm):
        return 1
    if isinstance(norm, nn.GroupNorm) and norm.num_channels % norm.num_groups == 0:
        return norm.num_channels // norm.num_groups
    return None


@register_family
class ResNetV2Family(StagedFamily):
    """timm ``ResNetV2``: drop blocks without a downsample, narrow each block's inner channels."""

    name = "resnetv2"
    description = "ResNet-V2 (pre-activation ResNets, BiT): depth per stage and inner width per block"
    examples = ("resnetv2_50", "resnetv2_50x1_bit", "resnetv2_18")
    kinds = (ResNetV2,)
    stage_kinds = (ResNetStage,)

    def block_ok(self, block: nn.Module) -> bool:
        chain = CHAINS.get(type(block))
        if chain is None:
            return False
        for producer, norm, consumer in chain:
            if not (_dense(block.get_submodule(producer)) and _dense(block.get_submodule(consumer))):
                return False
            if _group_size(block.get_submodule(norm)) != self.unit(block):
                return False
        return True

    def removable(self, block: nn.Module) -> bool:
        return getattr(block, "downsample", None) is None

    def unit(self, block: nn.Module) -> int:
        norm = block.get_submodule(CHAINS[type(block)][0][1])
        return _group_size(norm) or 1

    def width_base(self, block: nn.Module) -> int:
        return cast(nn.Conv2d, block.get_submodule("conv1")).out_channels

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        unit, recipe = self.unit(block), {}
        for producer, norm, consumer in CHAINS[type(block)]:
            made, read = (cast(nn.Conv2d, block.get_submodule(n)) for n in (producer, consumer))
            views: list[TensorDim] = [(made.weight, 0), (read.weight, 1)]
            idx = importance.select_groups(views, unit, channels) if unit > 1 else importance.select(views, channels)
            slice_conv(made, out_idx=idx)
            slice_norm(block.get_submodule(norm), idx)
            slice_conv(read, in_idx=idx)
            recipe["channels" if producer == "conv1" else producer] = idx.tolist()
        return recipe
