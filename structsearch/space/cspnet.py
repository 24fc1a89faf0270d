"""Adapter for timm's CSPNet family (CSPResNet, CSPDarkNet, DarkNet, the YOLOv5-style ``cs3*``
nets): depth per stage and the inner width of every residual block.

timm's ``CspNet`` is ``stem -> stages.0..N-1 -> head``. A stage (``CrossStage``, ``CrossStage3`` or
``DarkStage``) downsamples and splits or expands its input, runs ``blocks`` -- a ``Sequential`` of
residual blocks on one width -- and merges the result back; only the blocks are searched. They are

* ``BottleneckBlock`` (CSPResNet): ``x + conv3(conv2(conv1(x)))``, 1x1 / 3x3 / 1x1;
* ``DarkBlock`` (CSPDarkNet, cs3darknet): ``x + conv2(attn(conv1(x)))``, 1x1 then 3x3;
* ``EdgeBlock`` (cs3edgenet): ``x + conv2(attn(conv1(x)))``, 3x3 then 1x1,

each conv a ``ConvNormAct`` (conv, BatchNorm with its activation). What shrinks:

* ``width`` -- the channels between the convs (``mid``): ``conv1``'s outputs (and, in a bottleneck,
  ``conv2``'s too, each side keeping its own most important channels, as in a ResNet bottleneck),
  with the squeeze-excitation of ``cs3se*`` blocks (``attn`` on those channels) sliced with them.
  The stage's width (each block's input and output) stays.
* ``keep`` -- any block: every one adds its input back.

A bottleneck's grouped ``conv2`` (CSPResNeXt) ties both sides: they keep the same whole groups
(the block's ``unit``). Feature KD taps ``stages.0..N-1``. Not handled (the "no adapter" error):
anti-aliased block convs, attention on a bottleneck's middle channels and subclasses.
"""

from __future__ import annotations

from typing import cast

from timm.layers import SEModule
from timm.models.cspnet import BottleneckBlock, CrossStage, CrossStage3, CspNet, DarkBlock, DarkStage, EdgeBlock
from torch import Tensor, nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import slice_conv, slice_norm
from structsearch.space.mobilenet import plain_conv_norm
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _conv(block: nn.Module, name: str) -> nn.Conv2d:
    return cast(nn.Conv2d, block.get_submodule(f"{name}.conv"))


def _narrow(block: nn.Module, producer: str, consumer: str, channels: int, importance: Importance) -> Tensor:
    """Keep ``channels`` outputs of ``producer`` (its conv and BatchNorm), the squeeze-excitation on them
    (a dark or edge block's ``attn``) and the matching inputs of ``consumer``; the kept indices."""
    se = getattr(block, "attn", None) if producer == "conv1" and type(block) is not BottleneckBlock else None
    views: list[TensorDim] = [(_conv(block, producer).weight, 0), (_conv(block, consumer).weight, 1)]
    if isinstance(se, SEModule):
        views += [(se.fc1.weight, 1), (se.fc2.weight, 0)]
    idx = importance.select(views, channels)
    slice_conv(_conv(block, producer), out_idx=idx)
    slice_norm(block.get_submodule(f"{producer}.bn"), idx)
    if isinstance(se, SEModule):
        slice_conv(se.fc1, in_idx=idx)
        slice_conv(se.fc2, out_idx=idx)
    slice_conv(_conv(block, consumer), in_idx=idx)
    return idx


def _narrow_groups(block: nn.Module, unit: int, channels: int, importance: Importance) -> Tensor:
    """Keep ``channels`` (whole groups of ``unit``) of a bottleneck with a grouped ``conv2``: the same
    groups of ``conv1``'s outputs and ``conv2``'s, ranked over ``conv1``, ``conv2`` and ``conv3``."""
    conv1, conv2, conv3 = (_conv(block, n) for n in ("conv1", "conv2", "conv3"))
    idx = importance.select_groups([(conv1.weight, 0), (conv2.weight, 0), (conv3.weight, 1)], unit, channels)
    slice_conv(conv1, out_idx=idx)
    slice_norm(block.get_submodule("conv1.bn"), idx)
    slice_conv(conv2, out_idx=idx)  # a grouped conv keeps its kept groups' inputs with them
    slice_norm(block.get_submodule("conv2.bn"), idx)
    slice_conv(conv3, in_idx=idx)
    return idx


@register_family
class CspNetFamily(StagedFamily):
    """timm ``CspNet``: drop blocks inside a stage, narrow each block's middle channels."""

    name = "cspnet"
    description = "CSPNet (CSPResNet/ResNeXt, CSPDarkNet, DarkNet, cs3darknet/edgenet): depth per stage and block width"
    examples = ("cspresnet50", "cspresnext50", "cs3darknet_s")
    kinds = (CspNet,)
    stage_kinds = (CrossStage, CrossStage3, DarkStage)

    def block_ok(self, block: nn.Module) -> bool:
        if type(block) is BottleneckBlock:
            convs: tuple[str, ...] = ("conv1", "conv2", "conv3")
            attn_ok = isinstance(block.attn2, nn.Identity)
        elif type(block) in (DarkBlock, EdgeBlock):
            convs = ("conv1", "conv2")
            attn_ok = type(block.attn) in (nn.Identity, SEModule)
        else:
            return False
        if not attn_ok or not all(plain_conv_norm(block.get_submodule(c), grouped=c == "conv2") for c in convs):
            return False
        mid = _conv(block, "conv1").out_channels
        middle = _conv(block, "conv2")
        if type(block) is not BottleneckBlock:
            return middle.groups == 1
        return middle.in_channels == middle.out_channels == mid and mid % middle.groups == 0

    def width_base(self, block: nn.Module) -> int:
        return _conv(block, "conv1").out_channels

    def unit(self, block: nn.Module) -> int:
        """A grouped ``conv2`` (CSPResNeXt) keeps whole groups: its channels per group."""
        groups = _conv(block, "conv2").groups if type(block) is BottleneckBlock else 1
        return self.width_base(block) // groups if groups > 1 else 1

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        if self.unit(block) > 1:  # group g's outputs read group g's inputs only: both sides keep the same groups
            return {"channels": _narrow_groups(block, self.unit(block), channels, importance).tolist()}
        kept = _narrow(block, "conv1", "conv2", channels, importance)
        if type(block) is not BottleneckBlock:
            return {"channels": kept.tolist()}
        second = _narrow(block, "conv2", "conv3", channels, importance)
        return {"channels": kept.tolist(), "conv2": second.tolist()}
