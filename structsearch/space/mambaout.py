"""Adapter for timm's MambaOut: depth per stage and the hidden size of every gated CNN block.

MambaOut (Yu and Wang, CVPR 2025, "MambaOut: Do We Really Need Mamba for Vision?") is Mamba's gated
CNN block without the state-space model: ``stem -> stages.0..3 -> head``, each ``MambaOutStage`` a
``downsample`` (identity in stage 0) and ``blocks``, a ``Sequential`` of ``GatedConvBlock`` on
channels-last maps:

    g, i, c = split(fc1(norm(x)))              # gate, identity part, conv part of the hidden units
    x + fc2(act(g) * cat(i, dwconv7x7(c)))

Hidden unit ``u`` is gate row ``u`` of ``fc1``, value row ``hidden + u`` and column ``u`` of ``fc2``;
its value goes through the depthwise conv when ``u`` is one of the last ``conv_channels``. What
shrinks:

* ``width`` -- the hidden size: the kept units' gate and value rows, ``fc2`` columns and, for conv
  units, depthwise filters, ranked by all of them. The identity and conv parts keep the teacher's
  proportion (conv units ``round(k * conv / hidden)`` of ``k``: exact on the width grid for timm's
  models, where ``conv / hidden`` is 3/8), so a student's cost depends on its width alone, as the
  search's cost model needs. A kept unit computes exactly what it did in the teacher.
* ``keep`` -- every block (the stride and width change in the stage's ``downsample``).

Feature KD taps ``stages.0..3`` (channels-last maps, compared as they are). Subclasses and blocks
with other layers are refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

import torch
from timm.models.mambaout import GatedConvBlock, MambaOut, MambaOutStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.ops import slice_conv, slice_linear
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _gated(block: nn.Module) -> GatedConvBlock:
    """``block`` as the ``GatedConvBlock`` :meth:`MambaOutFamily.block_ok` accepted."""
    return cast(GatedConvBlock, block)


def split_counts(hidden: int, conv: int, channels: int) -> tuple[int, int]:
    """How many of ``channels`` kept units are identity units and how many conv units: the teacher's
    proportion, at least one conv unit (a depthwise conv needs a channel) and no more of either than
    the teacher has."""
    k_conv = min(conv, max(1, round(channels * conv / hidden)))
    k_ident = min(hidden - conv, channels - k_conv)
    return k_ident, channels - k_ident


@register_family
class MambaOutFamily(StagedFamily):
    """timm ``MambaOut``: drop blocks inside a stage, narrow each gated CNN block's hidden units."""

    name = "mambaout"
    description = "MambaOut: depth per stage and the gated CNN block's hidden size per block"
    examples = ("mambaout_femto", "mambaout_kobe", "mambaout_tiny")
    kinds = (MambaOut,)
    stage_kinds = (MambaOutStage,)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is not GatedConvBlock:
            return False
        fc1, conv, fc2 = (getattr(block, n, None) for n in ("fc1", "conv", "fc2"))
        if type(fc1) is not nn.Linear or type(fc2) is not nn.Linear or type(conv) is not nn.Conv2d:
            return False
        hidden, ident, conv_units = _gated(block).split_indices
        depthwise = conv.groups == conv.in_channels == conv.out_channels == conv_units
        return depthwise and ident + conv_units == hidden == fc2.in_features and fc1.out_features == 2 * hidden

    def width_base(self, block: nn.Module) -> int:
        return int(_gated(block).split_indices[0])

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        gated = _gated(block)
        fc1, conv, fc2 = gated.fc1, gated.conv, gated.fc2
        hidden, ident, _ = gated.split_indices
        k_ident, k_conv = split_counts(hidden, hidden - ident, channels)
        gate, value = fc1.weight[:hidden], fc1.weight[hidden:]

        def best(units: slice, k: int, extra: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
            views = [(gate[units], 0), (value[units], 0), (fc2.weight[:, units], 1), *extra]
            return importance.select(views, k)

        kept_ident = best(slice(0, ident), k_ident, [])
        kept_conv = best(slice(ident, hidden), k_conv, [(conv.weight, 0)])
        kept = torch.cat([kept_ident, ident + kept_conv])  # ascending: identity units come first
        slice_linear(fc1, out_idx=torch.cat([kept, hidden + kept]))
        slice_linear(fc2, in_idx=kept)
        slice_conv(conv, out_idx=kept_conv)
        gated.split_indices = (len(kept), k_ident, k_conv)
        return {"channels": kept.tolist()}
