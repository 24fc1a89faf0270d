"""Adapter for timm's EdgeNeXt: depth per stage and the MLP hidden size of every block.

EdgeNeXt (Maaz et al., ECCV-W 2022: a CNN-transformer hybrid for mobile devices) is
``stem -> stages.0..3 -> head``; each ``EdgeNeXtStage`` is a ``downsample`` (identity in stage 0)
and ``blocks``, a ``Sequential`` of

* ``ConvBlock``: ``x + gamma * mlp(norm(dw7x7(x)))`` on channels-last pixels;
* ``SplitTransposeBlock`` (the last of stages 1..3): multi-scale depthwise convs on channel splits,
  then transposed ("cross-covariance", channel-to-channel) attention, then the same ``gamma * mlp``.

Both end in timm's ``Mlp`` on the stage's width. What shrinks: ``width`` -- the MLP hidden size
(``fc1`` rows, ``fc2`` columns, :mod:`structsearch.pruning.mlp`); ``keep`` -- every block with its
shortcut on the input can be dropped (all timm builds: the stride and width change in the stage's
``downsample``). The transposed attention's heads stay: it reshapes its output to the block's width.
Feature KD taps ``stages.0..3``. Subclasses and other MLPs are not handled (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.layers import Mlp
from timm.models.edgenext import ConvBlock, CrossCovarianceAttn, EdgeNeXt, EdgeNeXtStage, SplitTransposeBlock
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_mlp, sliceable_mlp
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


@register_family
class EdgeNeXtFamily(StagedFamily):
    """timm ``EdgeNeXt``: drop blocks inside a stage, narrow each block's MLP."""

    name = "edgenext"
    description = "EdgeNeXt: depth per stage and MLP hidden size per block (conv and transposed-attention blocks)"
    examples = ("edgenext_xx_small", "edgenext_x_small", "edgenext_small")
    kinds = (EdgeNeXt,)
    stage_kinds = (EdgeNeXtStage,)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is SplitTransposeBlock:
            attention_ok = type(block.xca) is CrossCovarianceAttn
        else:
            attention_ok = type(block) is ConvBlock
        mlp = getattr(block, "mlp", None)
        return attention_ok and type(mlp) is Mlp and sliceable_mlp(mlp)

    def removable(self, block: nn.Module) -> bool:
        return not getattr(block, "shortcut_after_dw", False)  # a ConvBlock that strides or widens

    def width_base(self, block: nn.Module) -> int:
        return hidden_width(cast(nn.Module, block.mlp))

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        return {"channels": shrink_mlp(cast(nn.Module, block.mlp), channels, importance)}
