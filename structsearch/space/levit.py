"""Adapter for timm's LeViT: depth per stage, MLP hidden size per block and attention heads.

LeViT (Graham et al., ICCV 2021) is ``stem -> stages.0..2 -> head (+ head_dist)`` on tokens; every
linear layer is a ``LinearNorm`` (a bias-free ``nn.Linear`` and a BatchNorm on its outputs). Each
``LevitStage`` is a ``downsample`` (a ``LevitDownsample``, identity in stage 0) and ``blocks``:

* ``LevitBlock``: ``x + attn(x)`` then ``x + mlp(x)``, both on the stage's width. ``heads`` keeps
  whole heads of its attention (rows of ``qkv`` laid out per head, with their BatchNorm channels,
  ``proj``'s columns and the head's attention biases:
  :func:`~structsearch.pruning.heads.shrink_biased_heads`); ``width`` is the hidden size of its
  ``LevitMlp`` (``ln1``'s outputs and their BatchNorm, ``ln2``'s inputs). Any block can be dropped.
* ``LevitDownsample``: an attention that subsamples the tokens and changes the width (not residual,
  so never dropped), then a residual ``LevitMlp`` whose hidden size is searched.

Feature KD taps ``stages.0..N-1``. The convolutional variant (``levit_conv_*``: ``ConvNorm`` layers
on NCHW maps) and subclasses are not handled (the user gets the "no adapter" error).
"""

from __future__ import annotations

from typing import Any, cast

from timm.models.levit import Attention, Levit, LevitBlock, LevitDownsample, LevitMlp, LevitStage, LinearNorm
from torch import nn

from structsearch.pruning.heads import shrink_biased_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec


def _stages(model: nn.Module) -> list[LevitStage]:
    return list(getattr(model, "stages", ()))


def _searched(stage: LevitStage) -> list[tuple[str, nn.Module]]:
    """The stage's searched blocks by name: its downsample (when it has one), then its blocks."""
    down = [] if isinstance(stage.downsample, nn.Identity) else [("downsample", stage.downsample)]
    return down + [(f"blocks.{j}", b) for j, b in enumerate(cast(nn.Sequential, stage.blocks))]


def _linear_norm(m: nn.Module) -> bool:
    return type(m) is LinearNorm and type(m.linear) is nn.Linear and type(m.bn) is nn.BatchNorm1d


def _plain_mlp(mlp: nn.Module) -> bool:
    return type(mlp) is LevitMlp and _linear_norm(mlp.ln1) and _linear_norm(mlp.ln2)


def _plain_block(block: nn.Module) -> bool:
    if type(block) is LevitDownsample:
        return _plain_mlp(cast(nn.Module, block.mlp))
    if type(block) is not LevitBlock:
        return False
    attn = block.attn
    return bool(
        type(attn) is Attention
        and not attn.use_conv
        and _linear_norm(attn.qkv)
        and _linear_norm(attn.proj.get_submodule("ln"))
        and attn.qkv.linear.out_features == attn.num_heads * (2 * attn.key_dim + attn.val_dim)
        and _plain_mlp(cast(nn.Module, block.mlp))
    )


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of a ``Levit`` the adapter cannot slice, named (None: none)."""
    stages = _stages(model)
    if not stages:
        return "stages (none)"
    for i, stage in enumerate(stages):
        if type(stage) is not LevitStage or not isinstance(stage.blocks, nn.Sequential) or not _searched(stage):
            return f"stages.{i} ({type(stage).__name__})"  # (a student's stage may have a downsample only)
        for name, block in _searched(stage):
            if not _plain_block(block):
                return f"stages.{i}.{name} ({type(block).__name__})"
    return None


def _shrink_mlp(mlp: LevitMlp, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` hidden units of ``mlp``: ``ln1``'s outputs and their BatchNorm, ``ln2``'s inputs."""
    ln1, ln2 = cast(LinearNorm, mlp.ln1), cast(LinearNorm, mlp.ln2)
    return shrink_hidden(ln1.linear, ln2.linear, channels, importance, (ln1.bn,))


def shrink_heads(attn: Attention, heads: int, importance: Importance) -> list[int]:
    """Keep the ``heads`` most important heads of a ``LevitBlock``'s attention; ``forward`` reads
    ``num_heads`` and ``val_attn_dim``."""
    qkv, proj = cast(LinearNorm, attn.qkv), cast(LinearNorm, attn.proj.ln)
    kept = shrink_biased_heads(attn, qkv.linear, proj.linear, heads, importance, qkv_norm=qkv.bn)
    attn.key_attn_dim = len(kept) * attn.key_dim
    attn.val_attn_dim = len(kept) * attn.val_dim
    return kept.tolist()


@register_family
class LevitFamily(Family):
    """timm ``Levit``: drop blocks inside a stage; narrow MLPs and attention heads."""

    name = "levit"
    description = "LeViT: depth per stage, MLP hidden size and attention heads per block"
    examples = ("levit_128s", "levit_256")
    kinds = (Levit,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        out = []
        for i, stage in enumerate(_stages(model)):
            choices = []
            for name, block in _searched(stage):
                heads = block.attn.num_heads if isinstance(block, LevitBlock) else None
                choices.append(
                    BlockChoices(
                        name=f"stages.{i}.{name}",
                        removable=name != "downsample",
                        width_base=cast(LinearNorm, cast(LevitMlp, block.mlp).ln1).linear.out_features,
                        heads_base=heads,
                    )
                )
            out.append(tuple(choices))
        return tuple(out)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for stage, stage_spec, choices in zip(_stages(model), spec.stages, self.describe(model)):
            for (_, block), b, c in zip(_searched(stage), stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    entry["channels"] = _shrink_mlp(cast(LevitMlp, block.mlp), c.channels(b.width), importance)
                if b.keep and b.heads is not None and b.heads < (c.heads_base or 0):
                    entry["heads"] = shrink_heads(cast(LevitBlock, block).attn, b.heads, importance)
                recipe[c.name] = entry
            has_down = not isinstance(stage.downsample, nn.Identity)
            blocks = cast(nn.Sequential, stage.blocks)
            stage.blocks = keep_blocks(blocks, [b.keep for b in stage_spec[int(has_down) :]])
        return {"blocks": recipe}
