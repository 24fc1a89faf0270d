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

from typing import Any, cast

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
from structsearch.pruning.ops import is_batch_norm, keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec


def _stages(model: nn.Module) -> list[EfficientFormerStage]:
    return list(getattr(model, "stages", ()))


def _searched(stage: EfficientFormerStage) -> list[tuple[int, nn.Module]]:
    """The stage's meta blocks with their index in ``blocks`` (``Flat`` is not searched)."""
    return [(j, b) for j, b in enumerate(cast(nn.Sequential, stage.blocks)) if type(b) is not Flat]


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


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of an ``EfficientFormer`` the adapter cannot slice, named (None: none)."""
    stages = _stages(model)
    if not stages:
        return "stages (none)"
    for i, stage in enumerate(stages):
        if type(stage) is not EfficientFormerStage or not isinstance(stage.blocks, nn.Sequential):
            return f"stages.{i} ({type(stage).__name__})"
        if not _searched(stage):
            return f"stages.{i}.blocks (no meta block)"
        for j, block in _searched(stage):
            if not _plain_block(block):
                return f"stages.{i}.blocks.{j} ({type(block).__name__})"
    return None


@register_family
class EfficientFormerFamily(Family):
    """timm ``EfficientFormer``: drop meta blocks inside a stage; narrow MLPs and attention heads."""

    name = "efficientformer"
    description = "EfficientFormer (V1): depth per stage, MLP hidden size per block and attention heads"
    examples = ("efficientformer_l1", "efficientformer_l3")
    kinds = (EfficientFormer,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        out = []
        for i, stage in enumerate(_stages(model)):
            choices = []
            for j, block in _searched(stage):
                width = hidden_width(cast(nn.Module, block.mlp))  # fc1's outputs, conv or linear
                heads = block.token_mixer.num_heads if isinstance(block, MetaBlock1d) else None
                choices.append(
                    BlockChoices(
                        name=f"stages.{i}.blocks.{j}",
                        removable=True,  # residual, same shape in and out
                        width_base=width,
                        heads_base=heads,
                    )
                )
            out.append(tuple(choices))
        return tuple(out)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for stage, stage_spec, choices in zip(_stages(model), spec.stages, self.describe(model)):
            searched = _searched(stage)
            for (_, block), b, c in zip(searched, stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    if isinstance(block, MetaBlock2d):
                        mlp = block.mlp
                        entry["channels"] = shrink_hidden(
                            mlp.fc1, mlp.fc2, c.channels(b.width), importance, (mlp.norm1,)
                        )
                    else:
                        entry["channels"] = shrink_mlp(cast(nn.Module, block.mlp), c.channels(b.width), importance)
                if b.keep and b.heads is not None and b.heads < (c.heads_base or 0):
                    attn = cast(MetaBlock1d, block).token_mixer
                    kept = shrink_biased_heads(attn, attn.qkv, attn.proj, b.heads, importance)
                    attn.key_attn_dim = len(kept) * attn.key_dim
                    attn.val_attn_dim = len(kept) * attn.val_dim
                    entry["heads"] = kept.tolist()
                recipe[c.name] = entry
            keep = {j: b.keep for (j, _), b in zip(searched, stage_spec)}
            blocks = cast(nn.Sequential, stage.blocks)
            stage.blocks = keep_blocks(blocks, [keep.get(j, True) for j in range(len(blocks))])  # Flat stays
        return {"blocks": recipe}
