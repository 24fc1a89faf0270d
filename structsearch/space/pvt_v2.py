"""Adapter for timm's PVT v2 (Pyramid Vision Transformer v2): depth per stage and the MLP hidden size
of every block.

PVT v2 (Wang et al., CVM 2022) is ``patch_embed -> stages.0..3 -> head``; each
``PyramidVisionTransformerStage`` is a ``downsample`` (an overlapping patch embedding; none in stage
0), ``blocks`` (a ``ModuleList`` run on the stage's tokens) and a final norm. A block is

    x = x + attn(norm1(x))        (spatial-reduction attention: keys and values from a strided conv)
    x = x + mlp(norm2(x))         (fc1 -> depthwise 3x3 on the token map -> act -> fc2)

What shrinks:

* ``width`` -- the MLP hidden size (8x the stream in stages 0-1 of b0..b5, 4x later): ``fc1`` output
  rows, the same channels of the depthwise conv and ``fc2`` input columns, ranked by ``fc1``'s rows
  and ``fc2``'s columns. A kept channel computes exactly what it did in the teacher.
* ``keep`` -- every block (the stride and width change in the stage's ``downsample``).

The attention's heads stay: it reshapes its output to the block's width. Feature KD taps
``stages.0..3`` (NCHW maps). Subclasses and other attention or MLP modules are refused (the "no
adapter" error).
"""

from __future__ import annotations

from typing import cast

import torch
from timm.models.pvt_v2 import (
    Attention,
    Block,
    MlpWithDepthwiseConv,
    PyramidVisionTransformerStage,
    PyramidVisionTransformerV2,
)
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.pruning.ops import slice_conv
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _sliceable(mlp: nn.Module) -> bool:
    """timm's ``MlpWithDepthwiseConv``: linear ``fc1``/``fc2`` around a depthwise conv on the hidden channels."""
    if type(mlp) is not MlpWithDepthwiseConv:
        return False
    dw = mlp.dwconv
    linear = type(mlp.fc1) is nn.Linear and type(mlp.fc2) is nn.Linear
    return linear and type(dw) is nn.Conv2d and dw.groups == dw.in_channels == dw.out_channels == mlp.fc1.out_features


@register_family
class PvtV2Family(StagedFamily):
    """timm ``PyramidVisionTransformerV2``: drop blocks inside a stage, narrow each block's MLP."""

    name = "pvt_v2"
    description = "PVT v2: depth per stage and MLP hidden size per block"
    examples = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2_li")
    kinds = (PyramidVisionTransformerV2,)
    stage_kinds = (PyramidVisionTransformerStage,)

    def block_ok(self, block: nn.Module) -> bool:
        return type(block) is Block and type(block.attn) is Attention and _sliceable(cast(nn.Module, block.mlp))

    def width_base(self, block: nn.Module) -> int:
        return cast(MlpWithDepthwiseConv, block.mlp).fc1.out_features

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        mlp = cast(MlpWithDepthwiseConv, block.mlp)
        kept = shrink_hidden(mlp.fc1, mlp.fc2, channels, importance)
        slice_conv(mlp.dwconv, out_idx=torch.tensor(kept))
        return {"channels": kept}
