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

from typing import Any, cast

from timm.models.repvit import ConvNorm, RepVit, RepViTBlock, RepVitDownsample, RepVitMlp, RepVitStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec


def _stages(model: nn.Module) -> list[RepVitStage]:
    return list(getattr(model, "stages", ()))


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


def _searched(stage: RepVitStage) -> list[tuple[str, nn.Module]]:
    """The stage's searched blocks by name: its downsample (when it has one), then its blocks."""
    down = [] if isinstance(stage.downsample, nn.Identity) else [("downsample", stage.downsample)]
    return down + [(f"blocks.{j}", b) for j, b in enumerate(stage.blocks)]


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of a ``RepVit`` the adapter cannot slice, named (None: all can be)."""
    stages = _stages(model)
    if not stages:
        return "stages (none)"
    for i, stage in enumerate(stages):
        if type(stage) is not RepVitStage or not isinstance(stage.blocks, nn.Sequential) or not _searched(stage):
            return f"stages.{i} ({type(stage).__name__})"  # (a student's stage may have a downsample only)
        for name, block in _searched(stage):
            if _mlps(block) is None:
                return f"stages.{i}.{name} ({type(block).__name__})"
    return None


def _hidden(mlp: RepVitMlp) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]:
    """The layers on ``mlp``'s hidden channels: ``conv1``'s conv and norm, then ``conv2``'s conv."""
    return cast(nn.Conv2d, mlp.conv1.c), cast(nn.BatchNorm2d, mlp.conv1.bn), cast(nn.Conv2d, mlp.conv2.c)


def _shrink_mlp(mlp: RepVitMlp, ratio: float, importance: Importance) -> list[int]:
    """Keep ``ratio`` of ``mlp``'s hidden channels (at least one), ranked by ``importance``; their indices."""
    up, norm, down = _hidden(mlp)
    return shrink_hidden(up, down, max(1, round(up.out_channels * ratio)), importance, (norm,))


@register_family
class RepVitFamily(Family):
    """timm ``RepVit``: drop blocks inside a stage, narrow each block's channel-mixer MLP."""

    name = "repvit"
    description = "RepViT: depth per stage and channel-mixer (MLP) hidden width per block"
    examples = ("repvit_m0_9", "repvit_m1_1")
    kinds = (RepVit,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        out = []
        for i, stage in enumerate(_stages(model)):
            choices = []
            for name, block in _searched(stage):
                mlps = _mlps(block)
                assert mlps is not None  # handles() checked every block
                choices.append(
                    BlockChoices(
                        name=f"stages.{i}.{name}",
                        removable=name != "downsample",
                        width_base=_hidden(mlps[0])[0].out_channels,
                    )
                )
            out.append(tuple(choices))
        return tuple(out)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for stage, stage_spec, choices in zip(_stages(model), spec.stages, self.describe(model)):
            for (_, block), b, c in zip(_searched(stage), stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                mlps = _mlps(block)
                if b.keep and b.width < 1.0 and mlps is not None:
                    # the first MLP keeps exactly c.channels(b.width); a downsample's second the same fraction
                    ratio = c.channels(b.width) / c.width_base
                    kept = [_shrink_mlp(m, ratio, importance) for m in mlps]
                    entry["channels"] = kept[0]
                    if len(kept) > 1:
                        entry["pre_block_channels"] = kept[1]
                recipe[c.name] = entry
            has_down = not isinstance(stage.downsample, nn.Identity)
            stage.blocks = keep_blocks(stage.blocks, [b.keep for b in stage_spec[int(has_down) :]])
        return {"blocks": recipe}
