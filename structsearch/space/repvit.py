"""Adapter for timm's RepViT: depth per stage and the MLP (channel mixer) hidden width of every block.

RepViT (Wang et al., CVPR 2024) is a MobileNetV3-like CNN laid out as a ViT: timm's ``RepVit`` is
``stem -> stages.0..3 -> head``, each ``RepVitStage`` a ``downsample`` (identity in stage 0) and
``blocks``, a ``Sequential`` of ``RepViTBlock``:

    x = se(token_mixer(x));  x + channel_mixer(x)      token_mixer: BN(dw3x3(x) + dw1x1(x) + x)
                                                       channel_mixer: 1x1 (2x) -> GELU -> 1x1

The token mixer and SE act on the block's output width, the residual stream shared with the stage's
other blocks, so they never change. What shrinks:

* ``width`` -- the channel mixer's hidden channels (``RepVitMlp``: ``conv1`` outputs and their norm,
  ``conv2`` inputs), ranked by the L1 norm of ``conv1``'s rows and ``conv2``'s columns. A
  ``RepVitDownsample`` holds two such MLPs (its ``pre_block``'s on the input width and its ``ffn`` on
  the output width): both keep the same fraction of their hidden channels.
* ``keep`` -- any ``RepViTBlock`` can be dropped (same shape in and out; the stage's stride and width
  change in its ``downsample``, which stays); each stage keeps at least one block.

Feature KD taps ``stages.0..3``. The token mixers keep RepViT's re-parameterisation (``fuse``) for
deployment. Not handled (the user gets the "no adapter" error): blocks or MLPs other than timm's own.
"""

from __future__ import annotations

from typing import cast

from timm.models.repvit import ConvNorm, RepVit, RepViTBlock, RepVitDownsample, RepVitMlp, RepVitStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _plain_mlp(mlp: nn.Module) -> bool:
    """timm's ``RepVitMlp``: two ``ConvNorm`` 1x1 convs with BatchNorms."""
    return type(mlp) is RepVitMlp and all(
        type(cn) is ConvNorm and type(cn.c) is nn.Conv2d and cn.c.groups == 1 and type(cn.bn) is nn.BatchNorm2d
        for cn in (mlp.conv1, mlp.conv2)
    )


def _mlps(block: nn.Module) -> list[RepVitMlp] | None:
    """The MLPs whose hidden widths one searched block narrows (first: the one its ``width_base`` counts),
    or None where the block or an MLP is not timm's own."""
    if type(block) is RepViTBlock:
        mlps = [block.channel_mixer]
    elif type(block) is RepVitDownsample and type(block.pre_block) is RepViTBlock:
        mlps = [block.ffn, block.pre_block.channel_mixer]
    else:
        return None
    return mlps if all(_plain_mlp(m) for m in mlps) else None


def _hidden(mlp: RepVitMlp) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]:
    """The layers on ``mlp``'s hidden channels: ``conv1``'s conv and norm, then ``conv2``'s conv."""
    return cast(nn.Conv2d, mlp.conv1.c), cast(nn.BatchNorm2d, mlp.conv1.bn), cast(nn.Conv2d, mlp.conv2.c)


def _shrink_mlp(mlp: RepVitMlp, ratio: float, importance: Importance) -> list[int]:
    """Keep ``ratio`` of ``mlp``'s hidden channels (at least one), ranked by ``importance``; their indices."""
    up, norm, down = _hidden(mlp)
    return shrink_hidden(up, down, max(1, round(up.out_channels * ratio)), importance, (norm,))


@register_family
class RepVitFamily(StagedFamily):
    """timm ``RepVit``: drop blocks inside a stage, narrow each block's (and downsample's) channel-mixer MLP."""

    name = "repvit"
    description = "RepViT: depth per stage and channel-mixer (MLP) hidden width per block"
    examples = ("repvit_m0_9", "repvit_m1_1")
    kinds = (RepVit,)
    stage_kinds = (RepVitStage,)
    search_downsample = True

    def block_ok(self, block: nn.Module) -> bool:
        return _mlps(block) is not None

    def width_base(self, block: nn.Module) -> int:
        return _hidden(cast(list[RepVitMlp], _mlps(block))[0])[0].out_channels

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        # the first MLP keeps exactly ``channels``; a downsample's second the same fraction of its own
        mlps = cast(list[RepVitMlp], _mlps(block))
        ratio = channels / self.width_base(block)
        kept = [_shrink_mlp(m, ratio, importance) for m in mlps]
        return {"channels": kept[0], **({"pre_block_channels": kept[1]} if len(kept) > 1 else {})}
