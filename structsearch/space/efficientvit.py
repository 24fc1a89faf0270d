"""Adapter for timm's EfficientViT (MIT, Cai et al., ICCV 2023): depth per stage and the expansion
width of every inverted residual, in the B (``EfficientVit``) and L (``EfficientVitLarge``) series.

EfficientViT is ``stem -> stages.0..3 -> head``; each stage's ``blocks`` is a ``Sequential`` of

* ``ResidualBlock`` around an ``MBConv`` (1x1 expand -> depthwise kxk -> 1x1 project) or, in the L
  series' first stages, a ``FusedMBConv`` (kxk expand -> 1x1 project); the stage's first strides or
  widens and has no shortcut;
* ``EfficientVitBlock``: a residual ``LiteMLA`` (multi-scale ReLU linear attention), then a
  residual ``MBConv`` -- its ``local_module``.

What shrinks: ``width`` -- the expansion channels of every ``MBConv`` / ``FusedMBConv`` (the expand
conv's outputs and norm, the depthwise conv, the project conv's inputs), as a MobileNet block's
(:class:`~structsearch.space.mobilenet.ChannelGroup`); ``keep`` -- every block whose shortcuts are
identities can be dropped. ``LiteMLA``'s heads stay: its multi-scale aggregation convolves the
heads' q, k and v in groups that a head subset would have to re-cut. Feature KD taps
``stages.0..3``. The MSRA EfficientViT (``efficientvit_m*``) is another model: :mod:`.efficientvit_msra`.
"""

from __future__ import annotations

from typing import cast

from timm.models.efficientvit_mit import (
    ConvNormAct,
    EfficientVit,
    EfficientVitBlock,
    EfficientVitLarge,
    EfficientVitLargeStage,
    EfficientVitStage,
    FusedMBConv,
    LiteMLA,
    MBConv,
    ResidualBlock,
)
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.space.mobilenet import ChannelGroup, plain_group
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _group(block: nn.Module) -> ChannelGroup | None:
    """The expansion channels of the block's inverted residual (None: not one the adapter slices)."""
    inner = block.local_module if type(block) is EfficientVitBlock else block
    main = getattr(inner, "main", None)
    if type(inner) is not ResidualBlock or not isinstance(inner.pre_norm, nn.Identity):
        return None
    if type(main) is MBConv:
        layers = [main.inverted_conv, main.depth_conv, main.point_conv]
    elif type(main) is FusedMBConv:
        layers = [main.spatial_conv, main.point_conv]
    else:
        return None
    if not all(type(x) is ConvNormAct for x in layers):
        return None
    expand, *middle, project = (cast(ConvNormAct, x) for x in layers)
    norms = tuple(x.norm for x in (expand, *middle) if not isinstance(x.norm, nn.Identity))
    return plain_group(expand.conv, norms, middle[0].conv if middle else None, project.conv)


@register_family
class EfficientVitFamily(StagedFamily):
    """timm ``EfficientVit`` / ``EfficientVitLarge``: drop blocks, narrow every inverted residual."""

    name = "efficientvit"
    description = "EfficientViT (MIT) B/L: depth per stage and expansion width per block (MBConv, FusedMBConv)"
    examples = ("efficientvit_b0", "efficientvit_b1", "efficientvit_l1")
    kinds = (EfficientVit, EfficientVitLarge)
    stage_kinds = (EfficientVitStage, EfficientVitLargeStage)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is EfficientVitBlock:
            context = block.context_module
            if type(context) is not ResidualBlock or type(context.main) is not LiteMLA:
                return False
        return _group(block) is not None

    def removable(self, block: nn.Module) -> bool:
        residuals = [block.context_module, block.local_module] if type(block) is EfficientVitBlock else [block]
        return all(isinstance(r.shortcut, nn.Identity) for r in residuals)

    def width_base(self, block: nn.Module) -> int:
        return cast(ChannelGroup, _group(block)).width

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        group = cast(ChannelGroup, _group(block))
        idx = group.select(importance, channels)
        group.apply(idx)
        return {"channels": idx.tolist()}
