"""Adapter for timm's MobileViT (V1 and V2): depth and width of the inverted residuals, and depth, MLP
hidden size and (V1) heads of the transformers inside the MobileViT blocks.

MobileViT (Mehta & Rastegari, ICLR 2022; V2: separable self-attention, TMLR 2023) is a timm
``ByobNet``: ``stem -> stages.0..4 -> final_conv -> head``, each stage a ``Sequential`` of

* ``BottleneckBlock``: a MobileNetV2 inverted residual (1x1 expand -> depthwise kxk -> 1x1 project,
  each conv with a BatchNorm); the stage's first strides or widens and has no shortcut;
* in stages 2..4, one ``MobileVitBlock`` (V2: ``MobileVitV2Block``): local convs to the
  transformer's width, the map unfolded into patches, ``transformer`` (a ``Sequential`` of
  transformer blocks), folded back, projected (V1: fused with the block's input).

What is searched: every ``BottleneckBlock``'s expansion (``width``, sliced as a MobileNet block's:
:class:`~structsearch.space.mobilenet.ChannelGroup`), dropping those with an identity shortcut; and
every transformer block of a MobileViT block -- its MLP hidden size, its heads (V1's blocks are ViT
blocks, sliced by :mod:`structsearch.space.vit`; V2's separable attention has no heads) and
dropping it (each is residual). A MobileViT block itself stays: its convs fix the stage's width.
Feature KD taps ``stages.0..N-1``. Other ``ByobNet`` blocks (RepVGG, MobileOne, ResNet-style
bottlenecks with dense or grouped convs) are refused by name, as are subclasses.
"""

from __future__ import annotations

from typing import Any, cast

from timm.layers import Attention, ConvMlp, ConvNormAct
from timm.models.byobnet import BottleneckBlock, ByobNet
from timm.models.mobilevit import LinearSelfAttention, LinearTransformerBlock, MobileVitBlock, MobileVitV2Block
from timm.models.vision_transformer import Block
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_hidden, shrink_mlp
from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.mobilenet import ChannelGroup, plain_group
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec
from structsearch.space.vit import plain_block, shrink_heads

#: The MobileViT blocks (V1, V2), whose ``transformer`` is searched.
_MOBILEVIT = (MobileVitBlock, MobileVitV2Block)


def _stages(model: nn.Module) -> list[nn.Sequential]:
    return list(getattr(model, "stages", ()))


def _group(block: BottleneckBlock) -> ChannelGroup | None:
    """The expansion channels of an inverted residual (None: not one the adapter slices)."""
    parts = [block.get_submodule(n) for n in ("conv1_1x1", "conv2_kxk", "conv3_1x1")]
    extras = all(isinstance(block.get_submodule(n), nn.Identity) for n in ("conv2b_kxk", "attn", "attn_last"))
    if not extras or not all(type(p) is ConvNormAct for p in parts):
        return None
    expand, dw, project = (cast(ConvNormAct, p) for p in parts)
    return plain_group(expand.conv, (expand.bn, dw.bn), dw.conv, project.conv)


def _transformer_block_ok(block: nn.Module) -> bool:
    if type(block) is Block:
        return plain_block(block)
    mlp = getattr(block, "mlp", None)
    return (
        type(block) is LinearTransformerBlock
        and type(block.attn) is LinearSelfAttention
        and type(mlp) is ConvMlp
        and all(type(fc) is nn.Conv2d and fc.kernel_size == (1, 1) and fc.groups == 1 for fc in (mlp.fc1, mlp.fc2))
        and isinstance(mlp.norm, (nn.Identity, nn.BatchNorm2d))
    )


def _units(stage: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    """The stage's searched units by name: its inverted residuals and its transformer blocks, in order."""
    out: list[tuple[str, nn.Module]] = []
    for j, block in enumerate(stage):
        if isinstance(block, _MOBILEVIT):
            out += [(f"{prefix}.{j}.transformer.{k}", t) for k, t in enumerate(block.transformer)]
        else:
            out.append((f"{prefix}.{j}", block))
    return out


def _choices(name: str, unit: nn.Module) -> BlockChoices:
    if isinstance(unit, BottleneckBlock):
        group = _group(unit)
        assert group is not None, "a block unsupported() accepted"
        return BlockChoices(name, removable=isinstance(unit.shortcut, nn.Identity), width_base=group.width)
    heads = cast(Attention, unit.attn).num_heads if type(unit) is Block else None
    return BlockChoices(name, removable=True, width_base=hidden_width(cast(nn.Module, unit.mlp)), heads_base=heads)


def _shrink_width(unit: nn.Module, channels: int, importance: Importance) -> list[int]:
    if isinstance(unit, BottleneckBlock):
        group = cast(ChannelGroup, _group(unit))
        idx = group.select(importance, channels)
        group.apply(idx)
        return idx.tolist()
    if type(unit) is Block:
        return shrink_mlp(cast(nn.Module, unit.mlp), channels, importance)
    mlp = cast(ConvMlp, unit.mlp)
    return shrink_hidden(cast(nn.Conv2d, mlp.fc1), cast(nn.Conv2d, mlp.fc2), channels, importance, (mlp.norm,))


@register_family
class MobileViTFamily(Family):
    """timm MobileViT ``ByobNet``: inverted residuals' depth and expansion, transformer blocks' depth,
    MLP hidden size and (V1) heads."""

    name = "mobilevit"
    description = (
        "MobileViT V1/V2: depth and expansion width of the inverted residuals, "
        "depth, MLP hidden size and (V1) heads of the transformer blocks"
    )
    examples = ("mobilevit_xxs", "mobilevit_s", "mobilevitv2_050")
    kinds = (ByobNet,)

    def unsupported(self, model: nn.Module) -> str | None:
        stages = _stages(model)
        if not stages:
            return "stages (none)"
        for i, stage in enumerate(stages):
            if type(stage) is not nn.Sequential or not len(stage):
                return f"stages.{i} ({type(stage).__name__})"
            for j, block in enumerate(stage):
                if type(block) is BottleneckBlock and _group(block) is None:
                    return f"stages.{i}.{j} (BottleneckBlock with a dense or grouped conv, or attention)"
                if type(block) not in (BottleneckBlock, *_MOBILEVIT):
                    return f"stages.{i}.{j} ({type(block).__name__})"
                if type(block) in _MOBILEVIT:
                    for k, t in enumerate(cast(nn.Sequential, block.transformer)):
                        if not _transformer_block_ok(t):
                            return f"stages.{i}.{j}.transformer.{k} ({type(t).__name__})"
        return None

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return tuple(
            tuple(_choices(name, unit) for name, unit in _units(stage, f"stages.{i}"))
            for i, stage in enumerate(_stages(model))
        )

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        stages = cast(nn.Sequential, model.stages)
        for i, (stage, stage_spec, choices) in enumerate(zip(_stages(model), spec.stages, self.describe(model))):
            kept: dict[str, bool] = {}
            for (name, unit), b, c in zip(_units(stage, f"stages.{i}"), stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    entry["channels"] = _shrink_width(unit, c.channels(b.width), importance)
                if b.keep and b.heads is not None and b.heads < (c.heads_base or 0):
                    entry["heads"] = shrink_heads(cast(Attention, unit.attn), b.heads, importance)
                recipe[c.name] = entry
                kept[name] = b.keep
            for j, block in enumerate(stage):
                if isinstance(block, _MOBILEVIT):
                    transformer = cast(nn.Sequential, block.transformer)
                    mask = [kept[f"stages.{i}.{j}.transformer.{k}"] for k in range(len(transformer))]
                    block.transformer = keep_blocks(transformer, mask)
            mask = [kept.get(f"stages.{i}.{j}", True) for j in range(len(stage))]
            stages[i] = keep_blocks(stage, mask)
        return {"blocks": recipe}
