"""Adapter for timm's PP-HGNet / PP-HGNetV2 (``HighPerfGpuNet``): depth per stage and the width of
every block's convolution chain.

PP-HGNetV2 is the backbone of the real-time detectors RT-DETR and D-FINE. It is ``stem ->
stages.0..3 -> head``; each ``HighPerfGpuStage`` is a ``downsample`` (a depthwise stride-2 conv, or
identity) and ``blocks`` of ``HighPerfGpuBlock``:

    y_0 = x,  y_i = layer_i(y_{i-1})  (i = 1..L: L convs of ``mid`` channels, or 1x1 + depthwise "light" ones)
    out = aggregation(cat(y_0, y_1, ..., y_L))  (+ x in every block but a stage's first)

What shrinks:

* ``width`` -- ``mid``, the channels of every layer of the chain: each layer keeps the same number of
  its most important output channels (ranked by its own filters, the next layer's and the
  aggregation's columns for them), the next layer its matching inputs, and the aggregation's first
  1x1 conv its columns for each layer's part of the concatenation. The stage's stream (``x`` and
  ``out``) keeps its width.
* ``keep`` -- a block with the residual (every block of a stage but its first).

Feature KD taps ``stages.0..3``. Blocks with other layers (``Conv2dSame`` padding, subclasses) are
refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

import torch
from timm.models.hgnet import ConvBNAct, HighPerfGpuBlock, HighPerfGpuNet, HighPerfGpuStage, LightConvBNAct
from torch import Tensor, nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import is_batch_norm, slice_conv, slice_norm
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _plain(unit: nn.Module, depthwise: bool = False) -> bool:
    """timm's ``ConvBNAct`` of a plain ``Conv2d`` (dense, or depthwise when asked) and a BatchNorm."""
    if type(unit) is not ConvBNAct or type(unit.conv) is not nn.Conv2d or not is_batch_norm(unit.bn):
        return False
    conv = cast(nn.Conv2d, unit.conv)
    return conv.groups == (conv.in_channels if depthwise else 1) and (
        not depthwise or conv.in_channels == conv.out_channels
    )


def _layer_ok(layer: nn.Module) -> bool:
    if type(layer) is LightConvBNAct:
        return _plain(layer.conv1) and _plain(layer.conv2, depthwise=True)
    return _plain(layer)


def _entry(layer: nn.Module) -> nn.Conv2d:
    """The layer's conv that reads its input."""
    return cast(nn.Conv2d, layer.get_submodule("conv1.conv" if type(layer) is LightConvBNAct else "conv"))


def _producers(layer: nn.Module) -> list[ConvBNAct]:
    """The layer's units whose output channels are its output channels (the 1x1, then the depthwise)."""
    if type(layer) is LightConvBNAct:
        return [cast(ConvBNAct, layer.conv1), cast(ConvBNAct, layer.conv2)]
    return [cast(ConvBNAct, layer)]


def _aggregation(block: nn.Module) -> nn.Conv2d:
    """The aggregation's first 1x1 conv: it reads the concatenation of the input and every layer."""
    return cast(nn.Conv2d, block.get_submodule("aggregation.0.conv"))


@register_family
class HGNetFamily(StagedFamily):
    """timm ``HighPerfGpuNet``: drop residual blocks inside a stage, narrow each block's conv chain."""

    name = "hgnet"
    description = "PP-HGNet V1/V2 (RT-DETR's backbone): depth per stage and the conv chain's width per block"
    examples = ("hgnetv2_b0", "hgnetv2_b4", "hgnet_tiny")
    kinds = (HighPerfGpuNet,)
    stage_kinds = (HighPerfGpuStage,)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is not HighPerfGpuBlock or not isinstance(block.aggregation, nn.Sequential):
            return False
        layers = list(cast(nn.ModuleList, block.layers))
        first = block.aggregation[0]
        if not layers or not all(_layer_ok(layer) for layer in layers) or not _plain(first):
            return False
        widths = {_producers(layer)[-1].conv.out_channels for layer in layers}
        stream = _entry(layers[0]).in_channels
        agg = cast(nn.Conv2d, first.conv)
        return len(widths) == 1 and agg.kernel_size == (1, 1) and agg.in_channels == stream + len(layers) * widths.pop()

    def removable(self, block: nn.Module) -> bool:
        return bool(block.residual)

    def width_base(self, block: nn.Module) -> int:
        return int(_producers(cast(nn.ModuleList, block.layers)[0])[-1].conv.out_channels)

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        layers = list(cast(nn.ModuleList, block.layers))
        agg = _aggregation(block)
        stream, mid = _entry(layers[0]).in_channels, self.width_base(block)
        agg_columns: list[Tensor] = [torch.arange(stream)]
        kept: list[list[int]] = []
        for i, layer in enumerate(layers):
            part = slice(stream + i * mid, stream + (i + 1) * mid)
            views: list[TensorDim] = [(unit.conv.weight, 0) for unit in _producers(layer)]
            views.append((agg.weight[:, part], 1))
            if i + 1 < len(layers):
                views.append((_entry(layers[i + 1]).weight, 1))
            idx = importance.select(views, channels)
            for unit in _producers(layer):
                slice_conv(cast(nn.Conv2d, unit.conv), out_idx=idx)
                slice_norm(unit.bn, idx)
            if i + 1 < len(layers):
                slice_conv(_entry(layers[i + 1]), in_idx=idx)
            agg_columns.append(stream + i * mid + idx)
            kept.append(idx.tolist())
        slice_conv(agg, in_idx=torch.cat(agg_columns))
        return {"channels": kept[0], **{f"layers.{i}": k for i, k in enumerate(kept[1:], 1)}}
