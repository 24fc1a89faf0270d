"""Adapter for timm's MetaFormer (PoolFormer V1/V2, ConvFormer, CAFormer): depth per stage and the
MLP hidden size of every block.

MetaFormer (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024; PoolFormer, CVPR 2022) is one
block with a pluggable token mixer: ``stem -> stages.0..3 -> head``, each ``MetaFormerStage`` a
``downsample`` (identity where the width does not change) and ``blocks``, a ``Sequential`` of

    x = res_scale1(x) + layer_scale1(token_mixer(norm1(x)))
    x = res_scale2(x) + layer_scale2(mlp(norm2(x)))

with the token mixer average pooling (PoolFormer), a separable convolution (ConvFormer) or
self-attention (CAFormer's last two stages, on tokens). What shrinks:

* ``width`` -- the MLP hidden size (4x the stream): ``fc1`` rows and ``fc2`` columns of timm's
  ``Mlp`` (1x1 convs on NCHW maps, linear layers on tokens; :mod:`structsearch.pruning.mlp`). It is
  about two thirds of a ConvFormer block's MACs and almost all of a PoolFormer block's.
* ``keep`` -- every block: the stride and width change in the stage's ``downsample``.

What stays: the token mixers. CAFormer's attention reshapes its output to the block's width, so its
heads cannot be cut without rewriting its forward; the separable convolution's expansion (2x) is a
second inner width a block's one ``width`` does not describe. Feature KD taps ``stages.0..3`` (NCHW
maps in every stage). Subclasses and other mixers or MLPs are refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.layers import Mlp
from timm.models.metaformer import Attention, MetaFormer, MetaFormerBlock, MetaFormerStage, Pooling, SepConv
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_mlp, sliceable_mlp
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily

#: The token mixers timm's MetaFormers are built with (exact types: a subclass may compute something else).
TOKEN_MIXERS: tuple[type[nn.Module], ...] = (Pooling, SepConv, Attention)


@register_family
class MetaFormerFamily(StagedFamily):
    """timm ``MetaFormer``: drop blocks inside a stage, narrow each block's MLP."""

    name = "metaformer"
    description = "MetaFormer (PoolFormer V1/V2, ConvFormer, CAFormer): depth per stage and MLP hidden size per block"
    examples = ("poolformerv2_s12", "convformer_s18", "caformer_s18")
    kinds = (MetaFormer,)
    stage_kinds = (MetaFormerStage,)

    def block_ok(self, block: nn.Module) -> bool:
        mlp = getattr(block, "mlp", None)
        return (
            type(block) is MetaFormerBlock
            and type(block.token_mixer) in TOKEN_MIXERS
            and type(mlp) is Mlp
            and sliceable_mlp(mlp)
        )

    def refused(self, block: nn.Module) -> str:
        mixer = getattr(block, "token_mixer", None)
        return f"{type(block).__name__}{f' with a {type(mixer).__name__}' if mixer is not None else ''}"

    def width_base(self, block: nn.Module) -> int:
        return hidden_width(cast(nn.Module, block.mlp))

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        return {"channels": shrink_mlp(cast(nn.Module, block.mlp), channels, importance)}
