"""Adapter for timm's Swin Transformers (V1, V2): depth per stage, MLP hidden size and (V1) attention heads.

timm's ``SwinTransformer`` is ``patch_embed -> layers.0..3 -> norm -> head``; each
``SwinTransformerStage`` is a ``downsample`` (``PatchMerging``, identity in stage 0) and ``blocks``, a
``Sequential`` of ``SwinTransformerBlock`` on channels-last maps ``(B, H, W, C)``:

    x = x + attn(norm1(x))   (window attention: the map cut into windows, every other block's shifted)
    x = x + mlp(norm2(x))

The embedding width of a stage (the residual stream, ``PatchMerging``'s output) never changes. What
shrinks:

* ``width`` -- the MLP hidden size (timm's ``Mlp``: ``fc1`` rows, ``fc2`` columns), as in ViT blocks;
* ``heads`` -- whole heads of ``WindowAttention``: their ``qkv`` rows and ``proj`` columns
  (:mod:`structsearch.pruning.heads`) and their column of the relative position bias table, so a
  kept head computes exactly what it did in the teacher (same ``head_dim``, same softmax scale);
* ``keep`` -- any block can be dropped (same shape in and out); each stage keeps at least one. A
  block keeps its own window shift and mask, so a student may have two shifted blocks in a row.

SwinV2 (``SwinTransformerV2``: cosine attention, a continuous position bias MLP, post-norm blocks)
is searched in depth and MLP width only: its attention reshapes its output to the block's width, so
its heads stay. Feature KD taps ``layers.0..N-1`` (their outputs keep the teacher's shapes).
Subclasses of these modules are not handled: the user gets the "no adapter" error.
"""

from __future__ import annotations

from typing import cast

from timm.layers import Mlp
from timm.models import swin_transformer_v2 as v2
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, SwinTransformerStage, WindowAttention
from torch import nn

from structsearch.pruning.heads import head_views, slice_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_mlp, sliceable_mlp
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily

#: V1's block type, then V2's.
_BLOCKS = (SwinTransformerBlock, v2.SwinTransformerV2Block)


def _searched_heads(block: nn.Module) -> int | None:
    """The block's head count when its heads can be searched (V1), None when they stay (V2)."""
    return cast(WindowAttention, block.attn).num_heads if type(block) is SwinTransformerBlock else None


def _plain_attention(attn: nn.Module) -> bool:
    """timm's ``WindowAttention``: one fused ``qkv`` of ``3 * heads * head_dim`` rows and a ``proj``."""
    return (
        type(attn) is WindowAttention
        and isinstance(attn.qkv, nn.Linear)
        and isinstance(attn.proj, nn.Linear)
        and attn.qkv.out_features == 3 * attn.proj.in_features
        and attn.proj.in_features % attn.num_heads == 0
        and attn.relative_position_bias_table.shape[1] == attn.num_heads
    )


def _plain_block(block: nn.Module) -> bool:
    mlp = getattr(block, "mlp", None)
    attention_ok = type(block) is v2.SwinTransformerV2Block or _plain_attention(cast(nn.Module, block.attn))
    return (
        type(block) in _BLOCKS
        and attention_ok
        and type(mlp) is Mlp
        and isinstance(mlp.fc1, nn.Linear)
        and sliceable_mlp(mlp)
    )


def shrink_window_heads(attn: WindowAttention, heads: int, importance: Importance) -> list[int]:
    """Keep the ``heads`` most important heads of ``attn`` (ranked by their ``qkv`` rows and ``proj``
    columns) with their relative position biases; ``forward`` reads the head count from ``num_heads``."""
    kept = importance.select(head_views(attn.qkv, attn.proj, attn.num_heads), heads)
    slice_heads(attn.qkv, attn.proj, attn.num_heads, kept)
    table = attn.relative_position_bias_table
    attn.relative_position_bias_table = nn.Parameter(table.detach()[:, kept], requires_grad=table.requires_grad)
    attn.num_heads = len(kept)
    return kept.tolist()


@register_family
class SwinFamily(StagedFamily):
    """timm ``SwinTransformer``: drop blocks inside a stage, narrow each block's MLP and (V1) heads."""

    name = "swin"
    description = "Swin Transformers V1/V2: depth per stage, MLP hidden size per block and (V1) attention heads"
    examples = ("swin_tiny_patch4_window7_224", "swin_s3_tiny_224", "swinv2_tiny_window8_256")
    kinds = (SwinTransformer, v2.SwinTransformerV2)
    stages_attr = "layers"
    stage_kinds = (SwinTransformerStage, v2.SwinTransformerV2Stage)  # V2's blocks are a ModuleList

    def block_ok(self, block: nn.Module) -> bool:
        return _plain_block(block)

    def width_base(self, block: nn.Module) -> int:
        return hidden_width(cast(nn.Module, block.mlp))

    def heads_base(self, block: nn.Module) -> int | None:
        return _searched_heads(block)

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        return {"channels": shrink_mlp(cast(nn.Module, block.mlp), channels, importance)}

    def shrink_heads(self, block: nn.Module, heads: int, importance: Importance) -> list[int]:
        return shrink_window_heads(cast(WindowAttention, block.attn), heads, importance)
