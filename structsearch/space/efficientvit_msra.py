"""Adapter for timm's EfficientViT (MSRA) ``M0..M5``: depth per stage and the FFN hidden size of every block.

EfficientViT (Liu et al., CVPR 2023, "Memory Efficient Vision Transformer with Cascaded Group
Attention"; not MIT's EfficientViT, :mod:`structsearch.space.efficientvit`) is ``patch_embed ->
stages.0..2 -> head``; each ``EfficientVitStage`` is a ``downsample`` (identity in stage 0; else two
residual FFNs around a ``PatchMerging``) and ``blocks`` of the sandwich layout

    x -> dw0 -> ffn0 -> mixer -> dw1 -> ffn1        (each a residual: x + part(x))

with depthwise 3x3 convs ``dw0``/``dw1``, FFNs ``pw1 (1x1 conv + BN) -> ReLU -> pw2`` at 2x the
stream, and ``mixer`` windowed cascaded group attention. What shrinks:

* ``width`` -- the hidden size of both FFNs of a block (they are the same width in every timm model,
  and together about half a block's MACs): each keeps its own most important ``channels`` of
  ``pw1``'s rows and BatchNorm and ``pw2``'s columns (:func:`structsearch.pruning.mlp.shrink_hidden`).
* ``keep`` -- every block (all its parts are residual; the stride and width change in the stage's
  ``downsample``, which stays).

The cascaded group attention stays: each head reads its own slice of the input channels plus the
previous head's output, so a head cannot be cut without changing every later one. Feature KD taps
``stages.0..2``. Subclasses and other parts are refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.models.efficientvit_msra import (
    ConvMlp,
    ConvNorm,
    EfficientVitBlock,
    EfficientVitMsra,
    EfficientVitStage,
    LocalWindowAttention,
    ResidualDrop,
)
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily

#: The block's two FFNs; the first one's indices are the recipe's ``channels``.
FFNS = ("ffn0", "ffn1")


def _ffn(block: nn.Module, name: str) -> ConvMlp | None:
    """The block's residual FFN ``name`` when it is timm's ``ConvMlp`` of two dense 1x1 ``ConvNorm`` (else None)."""
    part = getattr(block, name, None)
    mlp = getattr(part, "m", None)
    if type(part) is not ResidualDrop or type(mlp) is not ConvMlp:
        return None
    for layer in (mlp.pw1, mlp.pw2):
        if type(layer) is not ConvNorm or type(layer.conv) is not nn.Conv2d:
            return None
        if layer.conv.groups != 1 or layer.conv.kernel_size != (1, 1):
            return None
    return mlp


@register_family
class EfficientVitMsraFamily(StagedFamily):
    """timm ``EfficientVitMsra``: drop blocks inside a stage, narrow each block's two FFNs."""

    name = "efficientvit_msra"
    description = "EfficientViT (MSRA) M0-M5: depth per stage and FFN hidden size per block"
    examples = ("efficientvit_m0", "efficientvit_m2", "efficientvit_m5")
    kinds = (EfficientVitMsra,)
    stage_kinds = (EfficientVitStage,)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is not EfficientVitBlock:
            return False
        mixer = cast(ResidualDrop, block.mixer)
        ffns = [_ffn(block, n) for n in FFNS]
        if type(mixer) is not ResidualDrop or type(mixer.m) is not LocalWindowAttention:
            return False
        return all(f is not None for f in ffns) and len({cast(ConvMlp, f).pw1.conv.out_channels for f in ffns}) == 1

    def width_base(self, block: nn.Module) -> int:
        return cast(ConvMlp, _ffn(block, FFNS[0])).pw1.conv.out_channels

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        kept = {}
        for name in FFNS:
            mlp = cast(ConvMlp, _ffn(block, name))
            kept[name] = shrink_hidden(mlp.pw1.conv, mlp.pw2.conv, channels, importance, (mlp.pw1.bn,))
        return {"channels": kept["ffn0"], "ffn1_channels": kept["ffn1"]}
