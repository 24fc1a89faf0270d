"""Adapter for timm's EfficientFormer (V1): depth per stage, MLP hidden size per block, and the heads
of the attention blocks.

EfficientFormer (Li et al., NeurIPS 2022) is ``stem -> stages.0..3 -> norm -> head (+ head_dist)``;
each ``EfficientFormerStage`` is a ``downsample`` (a strided conv, identity in stage 0) and ``blocks``:

* ``MetaBlock2d`` on NCHW maps: ``x + ls1(pool(x) - x)``, then ``x + ls2(mlp(x))`` with a
  ``ConvMlpWithNorm`` (1x1 conv -> BN -> GELU -> 1x1 conv -> BN);
* in the last stage, ``Flat`` (NCHW maps to tokens, no weights), then ``MetaBlock1d`` on tokens:
  LeViT-style attention with a learned bias per head, and timm's ``Mlp``, each residual with a layer
  scale on the stage's width.

What shrinks: ``width`` -- the MLP hidden size (``fc1`` rows and their BN, ``fc2`` columns);
``heads`` -- whole heads of a ``MetaBlock1d``'s attention with their biases
(:func:`~structsearch.pruning.heads.shrink_biased_heads`). Every meta block can be dropped (same
shape in and out); ``Flat`` is never searched and always kept. Feature KD taps ``stages.0..3`` (the
last stage's output is tokens, of the teacher's shape). The attention's biases are sized for 7x7
tokens, so these models run at 224 px (timm's limit, not ours). EfficientFormerV2 is another model
and not handled.
"""

from __future__ import annotations

from typing import cast

from timm.layers import Mlp
from timm.models.efficientformer import (
    Attention,
    ConvMlpWithNorm,
    EfficientFormer,
    EfficientFormerStage,
    Flat,
    MetaBlock1d,
    MetaBlock2d,
)
from torch import nn

from structsearch.pruning.heads import shrink_biased_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_hidden, shrink_mlp, sliceable_mlp
from structsearch.pruning.ops import is_batch_norm
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _conv_mlp(mlp: nn.Module) -> bool:
    """``ConvMlpWithNorm`` with dense 1x1 convs and a BatchNorm on the hidden channels."""
    return (
        type(mlp) is ConvMlpWithNorm
        and all(type(c) is nn.Conv2d and c.groups == 1 and c.kernel_size == (1, 1) for c in (mlp.fc1, mlp.fc2))
        and is_batch_norm(mlp.norm1)
    )


def _plain_block(block: nn.Module) -> bool:
    if type(block) is MetaBlock2d:
        return _conv_mlp(block.mlp)
    if type(block) is MetaBlock1d:
        attn = block.token_mixer
        return (
            type(attn) is Attention
            and type(block.mlp) is Mlp
            and sliceable_mlp(block.mlp)
            and attn.qkv.out_features == attn.num_heads * (2 * attn.key_dim + attn.val_dim)
            and attn.proj.in_features == attn.val_attn_dim
        )
    return False


@register_family
class EfficientFormerFamily(StagedFamily):
    """timm ``EfficientFormer``: drop meta blocks inside a stage; narrow MLPs and attention heads."""

    name = "efficientformer"
    description = "EfficientFormer (V1): depth per stage, MLP hidden size per block and attention heads"
    examples = ("efficientformer_l1", "efficientformer_l3")
    kinds = (EfficientFormer,)
    stage_kinds = (EfficientFormerStage,)

    def searched(self, block: nn.Module) -> bool:
        return type(block) is not Flat  # no weights: always kept

    def block_ok(self, block: nn.Module) -> bool:
        return _plain_block(block)

    def width_base(self, block: nn.Module) -> int:
        return hidden_width(cast(nn.Module, block.mlp))  # fc1's outputs, conv or linear

    def heads_base(self, block: nn.Module) -> int | None:
        return block.token_mixer.num_heads if isinstance(block, MetaBlock1d) else None

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        if isinstance(block, MetaBlock2d):
            conv = block.mlp
            return {"channels": shrink_hidden(conv.fc1, conv.fc2, channels, importance, (conv.norm1,))}
        return {"channels": shrink_mlp(cast(nn.Module, block.mlp), channels, importance)}

    def shrink_heads(self, block: nn.Module, heads: int, importance: Importance) -> list[int]:
        attn = cast(MetaBlock1d, block).token_mixer
        kept = shrink_biased_heads(attn, attn.qkv, attn.proj, heads, importance)
        attn.key_attn_dim = len(kept) * attn.key_dim
        attn.val_attn_dim = len(kept) * attn.val_dim
        return kept.tolist()
