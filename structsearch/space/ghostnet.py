"""Adapter for timm's GhostNets (V1 and V2): depth per stage and the ghost expansion width of every block.

timm's ``GhostNet`` is ``conv_stem -> blocks -> conv_head -> classifier``; ``blocks`` holds one
``Sequential`` of ``GhostBottleneck``\\ s per row of the paper's table and ends with a fixed 1x1
``ConvBnAct``. A bottleneck is

    ghost1 (in -> mid) -> conv_dw (stride 2 blocks) -> se -> ghost2 (mid -> out)      (+ shortcut)

and a *ghost module* makes its ``mid`` channels in two halves: ``primary_conv`` (1x1) makes
``mid / 2`` and ``cheap_operation`` (a depthwise 3x3 over those) makes one more from each, so channel
``j`` and ``j + mid / 2`` of the output come from the same primary filter. GhostNetV2's
``GhostModuleV2`` also gates every output channel by a ``short_conv`` branch computed from the input.

What shrinks:

* ``width`` -- the ``mid`` channels, kept in *pairs* (a primary channel and its cheap copy): the
  primary and cheap convs' outputs, the V2 gate's convs, ``conv_dw``, the SE and ``ghost2``'s inputs.
  Pairs are ranked by the primary filter, the cheap filter, ``conv_dw`` and ``ghost2``'s columns.
  ``unit`` is 2 and the ratios keep whole pairs (:func:`~structsearch.space.base.grouped_widths`).
* ``keep`` -- a block whose shortcut is the identity can be dropped. Stages are the resolution
  stages (a new one starts at every stride-2 block), so a stage always keeps its first block.

The output of every block is the residual stream and never changes, so the final ``ConvBnAct``, the
head and the feature taps stay valid. GhostNetV3 (re-parameterisable branches) is not handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.models._efficientnet_blocks import ConvBnAct, SqueezeExcite
from timm.models.ghostnet import GhostBottleneck, GhostModule, GhostModuleV2, GhostNet
from torch import Tensor, nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import is_batch_norm, keep_blocks, slice_conv, slice_norm
from structsearch.space.base import BlockChoices, Family, grouped_widths
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec


@dataclass(frozen=True)
class _Ghost:
    """The layers one bottleneck's ``mid`` channels run through, checked to be plain."""

    module: GhostModule | GhostModuleV2  # ghost1: its forward keeps out[:, :out_chs]
    primary: nn.Conv2d  # makes the first half
    cheap: nn.Conv2d  # depthwise over the primary's channels: makes the second half
    norms: tuple[nn.Module, nn.Module]  # after primary and cheap
    gate: tuple[nn.Module, ...]  # V2's short_conv: convs and norms over all mid channels (V1: none)
    dw: tuple[nn.Conv2d, nn.Module] | None  # conv_dw and bn_dw of a stride-2 block
    se: SqueezeExcite | None
    consumer: nn.Conv2d  # ghost2's primary conv: its input columns are the mid channels

    @property
    def pairs(self) -> int:
        return self.primary.out_channels

    def select(self, importance: Importance, k: int) -> Tensor:
        """The ``k`` most important pairs: channel ``j`` of the primary conv with its cheap copy."""
        p = self.pairs
        tensors: list[TensorDim] = [
            (self.primary.weight, 0),
            (self.cheap.weight, 0),
            (self.consumer.weight.unflatten(1, (2, p)), 2),
        ]
        if self.dw is not None:
            tensors.append((self.dw[0].weight.unflatten(0, (2, p)), 1))
        return importance.select(tensors, k)

    def apply(self, pairs: Tensor) -> list[int]:
        """Keep ``pairs`` in every layer, in place; the kept ``mid`` channel indices."""
        mid = torch.cat([pairs, pairs + self.pairs])
        slice_conv(self.primary, out_idx=pairs)
        slice_conv(self.cheap, out_idx=pairs)  # depthwise: one cheap channel per primary one
        for norm in self.norms:
            slice_norm(norm, pairs)
        self.module.out_chs = len(mid)
        for layer in self.gate:  # 1x1 conv, then depthwise (1,5) and (5,1) convs, each with a norm
            if isinstance(layer, nn.Conv2d):
                slice_conv(layer, out_idx=mid)
            else:
                slice_norm(layer, mid)
        if self.dw is not None:
            slice_conv(self.dw[0], out_idx=mid)
            slice_norm(self.dw[1], mid)
        if self.se is not None:
            slice_conv(self.se.conv_reduce, in_idx=mid)
            slice_conv(self.se.conv_expand, out_idx=mid)
        slice_conv(self.consumer, in_idx=mid)
        return mid.tolist()


def _conv_bn(seq: nn.Module, depthwise: bool = False) -> tuple[nn.Conv2d, nn.Module] | None:
    """The conv and BatchNorm opening a ghost module's ``Sequential``, if both are plain."""
    conv, norm = seq[0], seq[1]  # type: ignore[index]
    if type(conv) is not nn.Conv2d or not is_batch_norm(norm):
        return None
    plain = conv.groups == conv.in_channels == conv.out_channels if depthwise else conv.groups == 1
    return (conv, norm) if plain else None


def _ghost(block: nn.Module) -> _Ghost | None:
    """The block's ``mid`` channels, or None where a layer on them is of a kind we cannot slice."""
    if type(block) is not GhostBottleneck:
        return None
    g1, g2 = block.ghost1, block.ghost2
    if type(g1) not in (GhostModule, GhostModuleV2) or type(g2) is not GhostModule:
        return None
    assert isinstance(g1, (GhostModule, GhostModuleV2))  # for the type checker
    primary, cheap, consumer = _conv_bn(g1.primary_conv), _conv_bn(g1.cheap_operation, True), _conv_bn(g2.primary_conv)
    if primary is None or cheap is None or consumer is None:
        return None
    p = primary[0].out_channels
    if not (cheap[0].out_channels == p and g1.out_chs == 2 * p):  # ratio 2: channel j + p is the cheap copy of j
        return None
    gate: tuple[nn.Module, ...] = tuple(g1.short_conv) if isinstance(g1, GhostModuleV2) else ()
    gate_convs = [m for m in gate if isinstance(m, nn.Conv2d)]
    if gate and not (
        all(isinstance(m, nn.Conv2d) or is_batch_norm(m) for m in gate)
        and gate_convs[0].groups == 1
        and all(c.groups == c.out_channels == 2 * p for c in gate_convs[1:])
    ):
        return None
    se = block.se
    if se is not None and not (type(se) is SqueezeExcite and se.conv_reduce.groups == 1):
        return None
    dw = None
    if block.conv_dw is not None:
        if not (block.conv_dw.groups == block.conv_dw.out_channels == 2 * p and is_batch_norm(block.bn_dw)):
            return None
        dw = (block.conv_dw, block.bn_dw)
    return _Ghost(g1, primary[0], cheap[0], (primary[1], cheap[1]), gate, dw, se, consumer[0])


def _rows(model: nn.Module) -> list[nn.Sequential]:
    """The rows of ``model.blocks`` (the last one is the fixed ``ConvBnAct``); [] if one is no ``Sequential``."""
    rows = list(getattr(model, "blocks", []))
    return rows if all(isinstance(r, nn.Sequential) for r in rows) else []


def _stages(model: nn.Module) -> list[list[tuple[int, int, nn.Module]]]:
    """The resolution stages as ``(row, index, block)`` of ``model.blocks``: a stage starts at every
    row whose first block has stride 2 (the final ``ConvBnAct`` row is not searched)."""
    stages: list[list[tuple[int, int, nn.Module]]] = []
    for r, row in enumerate(_rows(model)[:-1]):
        for j, block in enumerate(row):
            if not stages or (j == 0 and getattr(block, "stride", 1) > 1):
                stages.append([])
            stages[-1].append((r, j, block))
    return stages


def _unsupported(model: nn.Module) -> str | None:
    """The first row or block of a ``GhostNet`` the adapter cannot slice, named (None: all can be)."""
    rows = _rows(model)  # a student's row may be empty: its blocks were dropped
    if len(rows) < 2 or not all(type(m) is ConvBnAct for m in rows[-1]):
        return "blocks (not GhostNet's rows of blocks ending in a ConvBnAct)"
    for r, row in enumerate(rows[:-1]):
        for j, block in enumerate(row):
            if _ghost(block) is None:
                return f"blocks.{r}.{j} ({type(block).__name__})"
    return None


@register_family
class GhostNetFamily(Family):
    """timm ``GhostNet`` V1/V2: drop identity-shortcut blocks, narrow each block's ghost expansion by pairs."""

    name = "ghostnet"
    description = "GhostNet V1/V2: depth per stage and ghost expansion width per block (primary/cheap pairs)"
    examples = ("ghostnet_100", "ghostnetv2_100")
    kinds = (GhostNet,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        out = []
        for stage in _stages(model):
            choices = []
            for r, j, block in stage:
                ghost = _ghost(block)
                assert ghost is not None  # handles() checked every block
                choices.append(
                    BlockChoices(
                        name=f"blocks.{r}.{j}",
                        # an identity shortcut: same shape in and out
                        removable=isinstance(block, GhostBottleneck) and len(block.shortcut) == 0,
                        width_base=2 * ghost.pairs,
                        widths=grouped_widths(ghost.pairs),
                        unit=2,
                    )
                )
            out.append(tuple(choices))
        return tuple(out)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        rows = _rows(model)
        keep = [[True] * len(row) for row in rows]
        for stage, stage_spec, stage_choices in zip(_stages(model), spec.stages, self.describe(model)):
            for (r, j, block), b, c in zip(stage, stage_spec, stage_choices):
                entry: dict[str, Any] = {"keep": b.keep}
                ghost = _ghost(block)
                if b.keep and b.width < 1.0 and ghost is not None:
                    entry["channels"] = ghost.apply(ghost.select(importance, c.channels(b.width) // 2))
                keep[r][j] = b.keep
                recipe[c.name] = entry
        # a row may end up empty: an empty Sequential passes its input on, as the dropped blocks did
        model.blocks = nn.Sequential(*[keep_blocks(row, k) for row, k in zip(rows, keep)])
        return {"blocks": recipe}
