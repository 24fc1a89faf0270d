"""Adapter for timm's FastViT: depth per stage and the ConvMLP hidden size of every block.

FastViT (Vasu et al., ICCV 2023: a hybrid built for mobile latency, re-parameterisable for
deployment) is ``stem -> stages.0..3 -> final_conv -> head``; each ``FastVitStage`` is a
``downsample`` (a re-parameterisable large-kernel ``PatchEmbed``, identity in stage 0), an optional
conditional position encoding ``pos_emb``, and ``blocks``, a ``Sequential`` of

* ``RepMixerBlock``: ``x = repmixer(x)`` (itself residual: ``x + s * (mixer(x) - norm(x))``), then
  ``x + s * convmlp(x)``;
* ``AttentionBlock`` (the SA models' last stage): ``x + s * attn(bn(x))``, then ``x + s * convmlp(x)``.

``ConvMlp`` is a depthwise 7x7 conv with BatchNorm on the stage's width, then two 1x1 convs through
the hidden channels. What shrinks: ``width`` -- the hidden channels (``fc1`` rows, ``fc2`` columns);
``keep`` -- any block can be dropped (same shape in and out), each stage keeping at least one. The
stream (token mixers, depthwise convs, layer scales) stays, so the student re-parameterises like its
teacher (``timm.utils.reparameterize_model``). The attention's heads stay: it reshapes its output to
the block's width. Feature KD taps ``stages.0..3``. Subclasses and other blocks are not handled.
"""

from __future__ import annotations

from typing import cast

from timm.models.fastvit import Attention, AttentionBlock, ConvMlp, FastVit, FastVitStage, RepMixer, RepMixerBlock
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import is_pointwise, shrink_hidden
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _conv_mlp(mlp: nn.Module) -> ConvMlp | None:
    """timm's ``ConvMlp`` with dense 1x1 ``fc1``/``fc2`` (None for anything else)."""
    if type(mlp) is not ConvMlp:
        return None
    pointwise = all(type(fc) is nn.Conv2d and is_pointwise(fc) for fc in (mlp.fc1, mlp.fc2))
    return mlp if pointwise else None


@register_family
class FastVitFamily(StagedFamily):
    """timm ``FastVit``: drop blocks inside a stage, narrow each block's ConvMLP."""

    name = "fastvit"
    description = "FastViT: depth per stage and ConvMLP hidden size per block (RepMixer and attention blocks)"
    examples = ("fastvit_t8", "fastvit_sa12", "fastvit_mci0")
    kinds = (FastVit,)
    stage_kinds = (FastVitStage,)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is RepMixerBlock:
            mixer_ok = type(block.token_mixer) is RepMixer
        else:
            mixer_ok = type(block) is AttentionBlock and type(block.token_mixer) is Attention
        return mixer_ok and _conv_mlp(cast(nn.Module, block.mlp)) is not None

    def width_base(self, block: nn.Module) -> int:
        return cast(ConvMlp, block.mlp).fc1.out_channels

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        mlp = cast(ConvMlp, block.mlp)  # its depthwise conv is on the stage's width: it stays
        return {"channels": shrink_hidden(mlp.fc1, mlp.fc2, channels, importance)}
