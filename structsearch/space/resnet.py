"""Adapter for timm's ResNets built from ``BasicBlock`` / ``Bottleneck`` (``resnet18`` ... ``resnet152``).

Stages are ``layer1..4``. A block can be dropped when it has no ``downsample`` (its input and output
shapes match). Only a block's *internal* width is searched; its output width is the residual stream
and never changes, which is why the block's attention module (``se``: SE, ECA, GC, ... all built on
the output width) and ``feature_info`` stay valid without any slicing.

* ``BasicBlock``: the output of ``conv1`` (``conv1 -> bn1 -> aa -> conv2``), as in the CIFAR adapter.
* ``Bottleneck``: the output of ``conv1`` (``bn1``, ``conv2`` in) *and* of ``conv2`` (``bn2``, ``aa``,
  ``conv3`` in). One ratio applies to both; each side keeps its own most important channels.
* A grouped ``conv2`` (ResNeXt: ``resnext50_32x4d``, ``seresnext*``) ties the two: group ``g``'s
  outputs are computed from group ``g``'s inputs only, so both sides keep the same whole groups,
  ranked together (:func:`~structsearch.space.base.grouped_widths` gives the block's ratios).

The recipe entry of a narrowed block records the kept indices under ``"channels"``: a list for a
``BasicBlock`` (as in the CIFAR adapter), ``{"conv1": [...], "conv2": [...]}`` for a ``Bottleneck``.

Supported beyond plain ResNets: SE/ECA/GC attention (``seresnet*``, ``ecaresnet*``), deep stems and
average-pool shortcuts (``resnet*d``), wide ResNets, drop-block/drop-path, and anti-aliasing by
average pooling (``resnetaa*``) or blur pooling (``resnetblur*``; its per-channel filter is sliced).
Not handled (``handles`` is False, so the user gets a clear "no adapter" error): non-BatchNorm layers
on the sliced path (``resnet50_gn``: slicing a GroupNorm changes its groups), unknown anti-aliasing
layers, and models whose stages were emptied by ``prune_intermediate_layers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from timm.layers import BlurPool2d
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.ops import is_batch_norm, keep_blocks, slice_conv, slice_norm
from structsearch.space.base import BlockChoices, Family, grouped_widths
from structsearch.space.cifar_resnet import shrink_basic_block
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec, BlockSpec

STAGES = ("layer1", "layer2", "layer3", "layer4")

#: Anti-aliasing layers that do not mix channels (``BlurPool2d`` also stores one filter per channel).
_AA_TYPES = (nn.Identity, nn.AvgPool2d, BlurPool2d)


# -- what can be handled --------------------------------------------------------------------------
def _block_supported(block: nn.Module) -> bool:
    """Whether every layer on the block's sliced path can be sliced by the shared primitives."""
    if not isinstance(block, (BasicBlock, Bottleneck)) or not isinstance(block.aa, _AA_TYPES):
        return False
    if isinstance(block, BasicBlock):
        return is_batch_norm(block.bn1)
    conv2 = block.conv2
    grouped_ok = conv2.groups == 1 or conv2.in_channels == conv2.out_channels == block.conv1.out_channels
    return grouped_ok and is_batch_norm(block.bn1) and is_batch_norm(block.bn2)


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of a ``ResNet`` the adapter cannot handle, named (None: all can be)."""
    for s in STAGES:
        stage = getattr(model, s, None)
        if not isinstance(stage, nn.Sequential) or len(stage) == 0:
            return f"{s} (missing or empty)"
        for j, block in enumerate(stage):
            if not _block_supported(block):
                norms = [type(m).__name__ for m in block.modules() if isinstance(m, nn.GroupNorm)]
                return f"{s}.{j} ({type(block).__name__}{' with ' + norms[0] if norms else ''})"
    return None


# -- slicing ----------------------------------------------------------------------------------------
def _slice_aa(aa: nn.Module | None, idx: Tensor) -> None:
    """Keep channels ``idx`` of an anti-aliasing layer; only a channel-sized ``BlurPool2d`` stores any."""
    if isinstance(aa, BlurPool2d) and aa.channels is not None:
        aa.filt = aa.get_buffer("filt")[idx].clone()
        aa.channels = len(idx)


def _kept(choices: BlockChoices, base: int, ratio: float) -> int:
    """Channels kept of a layer ``base`` wide, rounded exactly as :meth:`BlockChoices.channels` rounds."""
    return dataclasses.replace(choices, width_base=base).channels(ratio)


def _shrink_bottleneck(
    block: Bottleneck, choices: BlockChoices, ratio: float, importance: Importance
) -> dict[str, list[int]]:
    """Narrow both internal widths of a bottleneck by ``ratio``; returns the kept indices per conv output.

    Both index sets are chosen from the teacher's weights before anything is sliced, so neither
    choice depends on the other (and the recipe can be replayed in either order). A grouped
    ``conv2`` keeps the same whole groups on both sides.
    """
    if block.conv2.groups > 1:
        weights = [(block.conv1.weight, 0), (block.conv2.weight, 0), (block.conv3.weight, 1)]
        idx1 = idx2 = importance.select_groups(weights, choices.unit, choices.channels(ratio))
    else:
        idx1, idx2 = _bottleneck_indices(block, choices, ratio, importance)
    slice_conv(block.conv1, out_idx=idx1)
    slice_norm(block.bn1, idx1)
    if block.conv2.groups > 1:
        slice_conv(block.conv2, out_idx=idx2)
    else:
        slice_conv(block.conv2, out_idx=idx2, in_idx=idx1)
    slice_norm(block.bn2, idx2)
    _slice_aa(block.aa, idx2)
    slice_conv(block.conv3, in_idx=idx2)
    return {"conv1": idx1.tolist(), "conv2": idx2.tolist()}


def _bottleneck_indices(
    block: Bottleneck, choices: BlockChoices, ratio: float, importance: Importance
) -> tuple[Tensor, Tensor]:
    """Kept channels of ``conv1``'s and ``conv2``'s outputs in a bottleneck with a dense ``conv2``."""
    idx1 = importance.select(
        [(block.conv1.weight, 0), (block.conv2.weight, 1)], _kept(choices, block.conv1.out_channels, ratio)
    )
    idx2 = importance.select(
        [(block.conv2.weight, 0), (block.conv3.weight, 1)], _kept(choices, block.conv2.out_channels, ratio)
    )
    return idx1, idx2


def _shrink_block(
    block: BasicBlock | Bottleneck, choices: BlockChoices, ratio: float, importance: Importance
) -> list[int] | dict[str, list[int]]:
    """Narrow one block; the kept indices (a list for ``BasicBlock``, per conv for ``Bottleneck``)."""
    if isinstance(block, Bottleneck):
        return _shrink_bottleneck(block, choices, ratio, importance)
    kept = shrink_basic_block(block, choices.channels(ratio), importance)
    _slice_aa(block.aa, torch.tensor(kept, dtype=torch.long))
    return kept


def _choices(name: str, block: BasicBlock | Bottleneck) -> BlockChoices:
    """A block's choices: droppable without a shortcut projection; width = the searched conv's outputs."""
    width = block.conv2.out_channels if isinstance(block, Bottleneck) else block.conv1.out_channels
    groups = block.conv2.groups
    if groups == 1:
        return BlockChoices(name=name, removable=block.downsample is None, width_base=width)
    return BlockChoices(
        name=name,
        removable=block.downsample is None,
        width_base=width,
        widths=grouped_widths(groups),
        unit=width // groups,
    )


def _shrink_entry(
    block: BasicBlock | Bottleneck, b: BlockSpec, c: BlockChoices, importance: Importance
) -> dict[str, Any]:
    """Shrink one block as ``b`` says and return its recipe entry (kept channels only when narrowed)."""
    entry: dict[str, Any] = {"keep": b.keep}
    if b.keep and b.width < 1.0:
        entry["channels"] = _shrink_block(block, c, b.width, importance)
    return entry


# -- the family -------------------------------------------------------------------------------------
@register_family
class ResNetFamily(Family):
    """timm ``ResNet``: drop identity-shortcut blocks, narrow each block's internal width."""

    name = "resnet"
    description = (
        "timm ResNets and ResNeXts (BasicBlock/Bottleneck, incl. SE/ECA, -d, wide, aa/blur): depth and block width"
    )
    examples = ("resnet18", "resnet50", "resnext50_32x4d")
    kinds = (ResNet,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return tuple(tuple(_choices(f"{s}.{j}", block) for j, block in enumerate(getattr(model, s))) for s in STAGES)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for s, stage_spec, stage_choices in zip(STAGES, spec.stages, self.describe(model)):
            blocks = getattr(model, s)
            for block, b, c in zip(blocks, stage_spec, stage_choices):
                recipe[c.name] = _shrink_entry(block, b, c, importance)
            setattr(model, s, keep_blocks(blocks, [b.keep for b in stage_spec]))
        return {"blocks": recipe}
