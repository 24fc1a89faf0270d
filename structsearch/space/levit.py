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

from typing import cast

from timm.models.levit import Attention, Levit, LevitBlock, LevitDownsample, LevitMlp, LevitStage, LinearNorm
from torch import nn

from structsearch.pruning.heads import shrink_biased_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


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


def _shrink_mlp(mlp: LevitMlp, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` hidden units of ``mlp``: ``ln1``'s outputs and their BatchNorm, ``ln2``'s inputs."""
    ln1, ln2 = cast(LinearNorm, mlp.ln1), cast(LinearNorm, mlp.ln2)
    return shrink_hidden(ln1.linear, ln2.linear, channels, importance, (ln1.bn,))


def _shrink_heads(attn: Attention, heads: int, importance: Importance) -> list[int]:
    """Keep the ``heads`` most important heads of a ``LevitBlock``'s attention; ``forward`` reads
    ``num_heads`` and ``val_attn_dim``."""
    qkv, proj = cast(LinearNorm, attn.qkv), cast(LinearNorm, attn.proj.ln)
    kept = shrink_biased_heads(attn, qkv.linear, proj.linear, heads, importance, qkv_norm=qkv.bn)
    attn.key_attn_dim = len(kept) * attn.key_dim
    attn.val_attn_dim = len(kept) * attn.val_dim
    return kept.tolist()


@register_family
class LevitFamily(StagedFamily):
    """timm ``Levit``: drop blocks inside a stage; narrow MLPs (of blocks and downsamples) and attention heads."""

    name = "levit"
    description = "LeViT: depth per stage, MLP hidden size and attention heads per block"
    examples = ("levit_128s", "levit_256")
    kinds = (Levit,)
    stage_kinds = (LevitStage,)
    search_downsample = True  # its MLP; the subsampling attention stays

    def block_ok(self, block: nn.Module) -> bool:
        return _plain_block(block)

    def width_base(self, block: nn.Module) -> int:
        return cast(LinearNorm, cast(LevitMlp, block.mlp).ln1).linear.out_features

    def heads_base(self, block: nn.Module) -> int | None:
        return block.attn.num_heads if isinstance(block, LevitBlock) else None

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        return {"channels": _shrink_mlp(cast(LevitMlp, block.mlp), channels, importance)}

    def shrink_heads(self, block: nn.Module, heads: int, importance: Importance) -> list[int]:
        return _shrink_heads(cast(LevitBlock, block).attn, heads, importance)
