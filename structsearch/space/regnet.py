"""Adapter for timm's RegNets (RegNetX, RegNetY, and the pre-activation RegNetV): depth per stage and
the bottleneck width of every block, in whole groups.

timm's ``RegNet`` is ``stem -> s1..s4 -> final_conv -> head``; a ``RegStage`` holds its blocks as
children ``b1..bN`` and runs them in order. A block is a bottleneck around a *grouped* 3x3 conv
(``group_size`` channels per group: 8 in ``regnetx_002``, 16 in ``regnety_016``):

    conv1 (1x1) -> conv2 (3x3, groups) -> se (RegNetY) -> conv3 (1x1)     (+ shortcut)

What shrinks:

* ``width`` -- the bottleneck channels, kept in whole groups: the channels of the kept groups in
  ``conv1``'s outputs, in ``conv2`` (its group count drops), in the SE module's input and output and
  in ``conv3``'s inputs. Groups are ranked by the L1 norm of their ``conv1`` rows, ``conv2`` filters
  and ``conv3`` columns. A block with ``G`` groups may keep the grid's ratios rounded to whole groups
  (:func:`~structsearch.space.base.grouped_widths`), so a spec's width is the exact fraction kept.
* ``keep`` -- a block whose shortcut is the identity can be dropped (the first block of each stage
  changes stride and width through its ``downsample`` projection and stays); a stage keeps one.

The output width of every block (``conv3``, the shortcut, the stage) is the residual stream and never
changes, so ``final_conv``, the head and ``feature_info`` stay valid. Feature KD taps ``s1..s4``.
Not handled (``handles`` is False: the user gets the "no adapter" error): blocks other than timm's own
``Bottleneck`` / ``PreBottleneck``, non-BatchNorm norms on the sliced path, anti-aliased convs, and
attention modules other than timm's ``SEModule``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.layers import ConvNormAct, SEModule
from timm.models.regnet import Bottleneck, PreBottleneck, RegNet, RegStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.ops import is_batch_norm, slice_conv, slice_norm
from structsearch.space.base import BlockChoices, Family, grouped_widths
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec

STAGES = ("s1", "s2", "s3", "s4")


@dataclass(frozen=True)
class _Path:
    """The layers one block's bottleneck channels run through, for both block layouts timm builds."""

    conv1: nn.Conv2d
    norm1: nn.Module  # after conv1 (Bottleneck: conv1.bn; PreBottleneck: norm2)
    conv2: nn.Conv2d  # the grouped 3x3 conv
    norm2: nn.Module  # after conv2 (Bottleneck: conv2.bn; PreBottleneck: norm3, after the SE)
    se: nn.Module
    conv3: nn.Conv2d


def _path(block: nn.Module) -> _Path | None:
    """The block's bottleneck path, or None where a layer on it is of a kind we cannot slice."""
    if type(block) is Bottleneck:
        parts = (block.conv1, block.conv2, block.conv3)
        if not all(
            type(p) is ConvNormAct and isinstance(getattr(p, "aa", None), (nn.Identity, type(None))) for p in parts
        ):
            return None
        path = _Path(block.conv1.conv, block.conv1.bn, block.conv2.conv, block.conv2.bn, block.se, block.conv3.conv)
    elif type(block) is PreBottleneck:
        path = _Path(block.conv1, block.norm2, block.conv2, block.norm3, block.se, block.conv3)
    else:
        return None
    convs_ok = all(type(c) is nn.Conv2d for c in (path.conv1, path.conv2, path.conv3))
    norms_ok = all(is_batch_norm(n) for n in (path.norm1, path.norm2))
    se_ok = isinstance(path.se, nn.Identity) or (type(path.se) is SEModule and isinstance(path.se.bn, nn.Identity))
    if not (convs_ok and norms_ok and se_ok):
        return None
    width = path.conv1.out_channels
    grouped_ok = path.conv2.in_channels == path.conv2.out_channels == width and width % path.conv2.groups == 0
    return path if grouped_ok else None


def _blocks(stage: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(stage.named_children())


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of a ``RegNet`` the adapter cannot slice, named (None: all can be)."""
    for s in STAGES:
        stage = getattr(model, s, None)
        if type(stage) is not RegStage or not _blocks(stage):
            return f"{s} ({type(stage).__name__})"
        for name, block in _blocks(stage):
            if _path(block) is None:
                return f"{s}.{name} ({type(block).__name__})"
    return None


def _choices(name: str, block: nn.Module, path: _Path) -> BlockChoices:
    groups = path.conv2.groups
    return BlockChoices(
        name=name,
        removable=isinstance(block.downsample, nn.Identity),
        width_base=path.conv1.out_channels,
        widths=grouped_widths(groups),
        unit=path.conv1.out_channels // groups,
    )


def _shrink_bottleneck(path: _Path, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` (whole groups) of the bottleneck, ranked group by group; the kept channel indices."""
    group_size = path.conv2.out_channels // path.conv2.groups
    weights = [(path.conv1.weight, 0), (path.conv2.weight, 0), (path.conv3.weight, 1)]
    idx = importance.select_groups(weights, group_size, channels)
    slice_conv(path.conv1, out_idx=idx)
    slice_norm(path.norm1, idx)
    slice_conv(path.conv2, out_idx=idx)
    slice_norm(path.norm2, idx)
    if isinstance(path.se, SEModule):
        slice_conv(path.se.fc1, in_idx=idx)
        slice_conv(path.se.fc2, out_idx=idx)
    slice_conv(path.conv3, in_idx=idx)
    return idx.tolist()


@register_family
class RegNetFamily(Family):
    """timm ``RegNet``: drop identity-shortcut blocks, narrow each bottleneck by whole groups."""

    name = "regnet"
    description = "RegNetX/Y/V: depth per stage and bottleneck width per block (whole groups of the grouped conv)"
    examples = ("regnetx_002", "regnety_002", "regnety_016")
    kinds = (RegNet,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        out = []
        for s in STAGES:
            stage = []
            for name, block in _blocks(getattr(model, s)):
                path = _path(block)
                assert path is not None  # handles() checked every block
                stage.append(_choices(f"{s}.{name}", block, path))
            out.append(tuple(stage))
        return tuple(out)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for s, stage_spec, stage_choices in zip(STAGES, spec.stages, self.describe(model)):
            stage = getattr(model, s)
            for (name, block), b, c in zip(_blocks(stage), stage_spec, stage_choices):
                entry: dict[str, Any] = {"keep": b.keep}
                path = _path(block)
                if b.keep and b.width < 1.0 and path is not None:
                    entry["channels"] = _shrink_bottleneck(path, c.channels(b.width), importance)
                if not b.keep:
                    delattr(stage, name)  # RegStage runs its remaining children in order
                recipe[c.name] = entry
        return {"blocks": recipe}
