"""Adapter for the CIFAR ResNets (``cifar_resnet20`` ... ``cifar_resnet110``).

Stages are ``layer1..3``. A block can be dropped when its shortcut is the identity (stride 1, same
width); the first block of stages 2 and 3 downsamples and always stays. A block's internal width is
the output of its first convolution (``conv1 -> bn1 -> conv2``); its output width is tied to the
residual stream and never changes.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from structsearch.models.cifar_resnet import BasicBlockA, CifarResNet
from structsearch.pruning.importance import Importance
from structsearch.pruning.ops import keep_blocks, slice_conv, slice_norm
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec

STAGES = ("layer1", "layer2", "layer3")


class BasicBlockLike(Protocol):
    """A block whose internal width runs ``conv1 -> bn1 -> conv2`` (CIFAR and timm BasicBlocks)."""

    @property
    def conv1(self) -> nn.Conv2d: ...
    @property
    def bn1(self) -> nn.Module: ...
    @property
    def conv2(self) -> nn.Conv2d: ...


def shrink_basic_block(block: BasicBlockLike, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` of the block's internal width (``conv1`` out, ``bn1``, ``conv2`` in).

    Works for any block with ``conv1``/``bn1``/``conv2`` attributes (CIFAR and timm BasicBlocks).
    """
    idx = importance.select([(block.conv1.weight, 0), (block.conv2.weight, 1)], channels)
    slice_conv(block.conv1, out_idx=idx)
    slice_norm(block.bn1, idx)
    slice_conv(block.conv2, in_idx=idx)
    return idx.tolist()


@register_family
class CifarResNetFamily(Family):
    name = "cifar_resnet"
    description = "CIFAR ResNets (6n+2 layers, option-A shortcuts): depth and block width"
    examples = ("cifar_resnet20", "cifar_resnet56")
    kinds = (CifarResNet,)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        stages = []
        for s in STAGES:
            stage = []
            for j, block in enumerate(getattr(model, s)):
                assert isinstance(block, BasicBlockA)
                stage.append(
                    BlockChoices(
                        name=f"{s}.{j}",
                        removable=isinstance(block.shortcut, nn.Identity),
                        width_base=block.conv1.out_channels,
                    )
                )
            stages.append(tuple(stage))
        return tuple(stages)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        choices = self.describe(model)
        recipe: dict[str, Any] = {}
        for s, stage_spec, stage_choices in zip(STAGES, spec.stages, choices):
            blocks = getattr(model, s)
            for block, b, c in zip(blocks, stage_spec, stage_choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    entry["channels"] = shrink_basic_block(block, c.channels(b.width), importance)
                recipe[c.name] = entry
            setattr(model, s, keep_blocks(blocks, [b.keep for b in stage_spec]))
        return {"blocks": recipe}
