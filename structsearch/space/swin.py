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

from typing import Any, cast

from timm.layers import Mlp
from timm.models import swin_transformer_v2 as v2
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, SwinTransformerStage, WindowAttention
from torch import nn

from structsearch.pruning.heads import head_views, slice_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_mlp, sliceable_mlp
from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec

#: V1's stage and block types, then V2's.
_STAGES = (SwinTransformerStage, v2.SwinTransformerV2Stage)
_BLOCKS = (SwinTransformerBlock, v2.SwinTransformerV2Block)


def _stages(model: nn.Module) -> list[SwinTransformerStage]:
    return list(getattr(model, "layers", ()))


def _blocks(stage: nn.Module) -> list[SwinTransformerBlock]:
    """The stage's blocks (a ``Sequential`` in V1, a ``ModuleList`` in V2)."""
    return cast(list[SwinTransformerBlock], list(cast(nn.Module, stage.blocks).children()))


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


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of a ``SwinTransformer`` the adapter cannot slice, named (None: none)."""
    stages = _stages(model)
    if not stages:
        return "layers (none)"
    for i, stage in enumerate(stages):
        blocks = getattr(stage, "blocks", None)
        if type(stage) not in _STAGES or not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks):
            return f"layers.{i} ({type(stage).__name__})"
        for j, block in enumerate(blocks):
            if not _plain_block(block):
                return f"layers.{i}.blocks.{j} ({type(block).__name__})"
    return None


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
class SwinFamily(Family):
    """timm ``SwinTransformer``: drop blocks inside a stage, narrow each block's MLP and heads."""

    name = "swin"
    description = "Swin Transformers V1/V2: depth per stage, MLP hidden size per block and (V1) attention heads"
    examples = ("swin_tiny_patch4_window7_224", "swin_s3_tiny_224", "swinv2_tiny_window8_256")
    kinds = (SwinTransformer, v2.SwinTransformerV2)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        out = []
        for i, stage in enumerate(_stages(model)):
            choices = []
            for j, block in enumerate(_blocks(stage)):
                heads = _searched_heads(block)
                choices.append(
                    BlockChoices(
                        name=f"layers.{i}.blocks.{j}",
                        removable=True,  # residual, same map shape in and out
                        width_base=hidden_width(block.mlp),
                        heads_base=heads,
                    )
                )
            out.append(tuple(choices))
        return tuple(out)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for stage, stage_spec, choices in zip(_stages(model), spec.stages, self.describe(model)):
            for block, b, c in zip(_blocks(stage), stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    entry["channels"] = shrink_mlp(block.mlp, c.channels(b.width), importance)
                if b.keep and b.heads is not None and b.heads < (c.heads_base or 0):
                    entry["heads"] = shrink_window_heads(block.attn, b.heads, importance)
                recipe[c.name] = entry
            kept = keep_blocks(nn.Sequential(*_blocks(stage)), [b.keep for b in stage_spec])
            stage.blocks = kept if isinstance(stage.blocks, nn.Sequential) else nn.ModuleList(kept)  # V2: a list
        return {"blocks": recipe}
