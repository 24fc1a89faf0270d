"""Adapter for timm's InceptionNeXt (``MetaNeXt``): depth per stage and the MLP hidden size of every block.

InceptionNeXt (Yu et al., CVPR 2024) is ConvNeXt with its 7x7 depthwise convolution split into
inception branches: ``stem -> stages.0..3 -> head``, each ``MetaNeXtStage`` a ``downsample``
(identity in stage 0) and ``blocks``, a ``Sequential`` of ``MetaNeXtBlock``:

    x + gamma * fc2(act(norm(fc1(bn(inception_dwconv(x))))))

The inception token mixer (a 3x3 square, a 1xk and a kx1 band depthwise kernel on channel splits,
an identity on the rest), the BatchNorm and the layer scale ``gamma`` work on the block's output
width, the residual stream shared with the stage's other blocks, so they stay. What shrinks:
``width`` -- the hidden size of the block's ``ConvMlp`` (4x the stream in timm's models; 3x in the
last stage): ``fc1`` output rows, its hidden norm where it has one and ``fc2`` input columns
(:func:`structsearch.pruning.mlp.shrink_hidden`); ``keep`` -- every block (the stride and width
change in the stage's ``downsample``). Feature KD taps ``stages.0..3``. Subclasses, other token
mixers and MLPs are refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.models.inception_next import ConvMlp, InceptionDWConv2d, MetaNeXt, MetaNeXtBlock, MetaNeXtStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import is_pointwise, shrink_hidden
from structsearch.pruning.ops import is_batch_norm
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _sliceable(mlp: nn.Module) -> bool:
    """InceptionNeXt's own ``ConvMlp`` with dense 1x1 ``fc1``/``fc2`` and no hidden norm or a BatchNorm."""
    if type(mlp) is not ConvMlp:
        return False
    pointwise = all(type(fc) is nn.Conv2d and is_pointwise(fc) for fc in (mlp.fc1, mlp.fc2))
    return pointwise and (type(mlp.norm) is nn.Identity or is_batch_norm(mlp.norm))


@register_family
class InceptionNeXtFamily(StagedFamily):
    """timm ``MetaNeXt``: drop blocks inside a stage, narrow each block's ConvMlp."""

    name = "inception_next"
    description = "InceptionNeXt: depth per stage and MLP hidden size per block"
    examples = ("inception_next_atto", "inception_next_tiny")
    kinds = (MetaNeXt,)
    stage_kinds = (MetaNeXtStage,)

    def block_ok(self, block: nn.Module) -> bool:
        return (
            type(block) is MetaNeXtBlock
            and type(block.token_mixer) is InceptionDWConv2d
            and _sliceable(cast(nn.Module, block.mlp))
        )

    def width_base(self, block: nn.Module) -> int:
        return cast(ConvMlp, block.mlp).fc1.out_channels

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        mlp = cast(ConvMlp, block.mlp)
        return {"channels": shrink_hidden(mlp.fc1, mlp.fc2, channels, importance, (mlp.norm,))}
