"""Adapter for timm's EfficientFormerV2: depth per stage and the MLP hidden size of every block.

EfficientFormerV2 (Li et al., ICCV 2023: "Rethinking Vision Transformers for MobileNet Size and
Speed") is ``stem -> stages.0..3 -> norm -> head (+ head_dist)`` on NCHW maps; each
``EfficientFormerV2Stage`` is a ``downsample`` (a strided conv, with attention in the last stages;
identity in stage 0) and ``blocks`` of ``EfficientFormerV2Block``:

    x + ls1(attn(x))   (the last two stages' final blocks: ``Attention2d``; elsewhere no token mixer)
    x + ls2(mlp(x))    (``ConvMlpWithNorm``: 1x1 conv+BN+GELU -> depthwise 3x3+BN+GELU -> 1x1 conv+BN)

What shrinks: ``width`` -- the MLP's hidden channels (``fc1``'s conv and BN, the depthwise ``mid``
and its BN, ``fc2``'s inputs: :class:`~structsearch.space.mobilenet.ChannelGroup`, as a MobileNet
expansion); ``keep`` -- any block can be dropped (residual, same shape in and out). The attention's
heads stay: its talking-head convolutions mix every head with every other, so no subset of heads
computes what it did in the teacher. Its biases are sized for the model's ``img_size`` (224 px
unless built with another: ``--kw img_size=S``). Feature KD taps ``stages.0..3``.
"""

from __future__ import annotations

from typing import cast

from timm.layers import ConvNormAct
from timm.models.efficientformer_v2 import (
    Attention2d,
    ConvMlpWithNorm,
    ConvNorm,
    EfficientFormerV2,
    EfficientFormerV2Block,
    EfficientFormerV2Stage,
)
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.space.mobilenet import ChannelGroup, plain_group
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _hidden(mlp: nn.Module) -> ChannelGroup | None:
    """The MLP's hidden channels as one group (None: not timm's plain ``ConvMlpWithNorm``)."""
    if type(mlp) is not ConvMlpWithNorm or type(mlp.fc1) is not ConvNormAct or type(mlp.fc2) is not ConvNorm:
        return None
    fc1, fc2, mid = cast(ConvNormAct, mlp.fc1), cast(ConvNorm, mlp.fc2), mlp.mid
    if type(mid) is ConvNormAct:
        return plain_group(fc1.conv, (fc1.bn, mid.bn), mid.conv, fc2.conv)
    return plain_group(fc1.conv, (fc1.bn,), None, fc2.conv) if isinstance(mid, nn.Identity) else None


@register_family
class EfficientFormerV2Family(StagedFamily):
    """timm ``EfficientFormerV2``: drop blocks inside a stage, narrow each block's MLP."""

    name = "efficientformer_v2"
    description = "EfficientFormerV2: depth per stage and MLP hidden size per block (conv and attention blocks)"
    examples = ("efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_l")
    kinds = (EfficientFormerV2,)
    stage_kinds = (EfficientFormerV2Stage,)

    def block_ok(self, block: nn.Module) -> bool:
        mixer = block.token_mixer if type(block) is EfficientFormerV2Block else False
        return (mixer is None or type(mixer) is Attention2d) and _hidden(cast(nn.Module, block.mlp)) is not None

    def width_base(self, block: nn.Module) -> int:
        return cast(ChannelGroup, _hidden(cast(nn.Module, block.mlp))).width

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        group = cast(ChannelGroup, _hidden(cast(nn.Module, block.mlp)))
        idx = group.select(importance, channels)
        group.apply(idx)
        return {"channels": idx.tolist()}
