"""Adapter for timm's ReXNet: the expansion width of every linear bottleneck.

ReXNet (Han et al., CVPR 2021, "Rethinking Channel Dimensions for Efficient Model Design") is a
MobileNetV2-like network whose channels grow a little at *every* block: ``stem -> features -> head``,
``features`` a ``Sequential`` of ``LinearBottleneck`` s and a final 1x1 ``ConvNormAct``. A bottleneck
is ``conv_pwl(act(se(conv_dw(conv_exp(x)))))`` with a partial residual (``x`` added to the first
``in_channels`` outputs). Since no block keeps its width, none can be dropped: only widths are
searched. What shrinks:

* ``width`` -- the expansion channels (``conv_exp``'s outputs, 6x the input; a block without
  ``conv_exp`` keeps its input width): ``conv_exp``'s rows and BatchNorm, the depthwise conv and its
  BatchNorm, the squeeze-excitation's inputs and outputs, and ``conv_pwl``'s columns, ranked by all of
  them. A kept channel computes exactly what it did in the teacher.

Stages (for the search's per-stage shape and ``structsearch space``) follow timm's ``stage_ends``:
the blocks up to each change of resolution. Feature KD taps every block's output (their widths
never change). Subclasses and other layers are refused (the "no adapter" error).
"""

from __future__ import annotations

from typing import Any, cast

from timm.layers import ConvNormAct, SEModule
from timm.models.rexnet import LinearBottleneck, RexNet
from torch import nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import slice_conv, slice_norm
from structsearch.space.base import BlockChoices, Family
from structsearch.space.mobilenet import plain_conv_norm
from structsearch.space.registry import register_family
from structsearch.space.spec import WIDTH_GRID, ArchSpec

#: The model's attribute holding the blocks.
STAGE = "features"


def _block_ok(block: nn.Module) -> bool:
    return (
        type(block) is LinearBottleneck
        and (block.conv_exp is None or plain_conv_norm(block.conv_exp))
        and plain_conv_norm(block.conv_dw, depthwise=True)
        and plain_conv_norm(block.conv_pwl)
        and (block.se is None or type(block.se) is SEModule)
    )


def _stages(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The bottlenecks by stage (``stage_ends``: the last feature index of each resolution)."""
    features = list(cast(nn.Sequential, getattr(model, STAGE)))
    ends = [int(e) for e in getattr(model, "stage_ends", [len(features) - 1])]
    stages, start = [], 0
    for end in ends:
        blocks = [(f"{STAGE}.{j}", features[j]) for j in range(start, end + 1) if type(features[j]) is not ConvNormAct]
        if blocks:
            stages.append(blocks)
        start = end + 1
    return stages


@register_family
class RexNetFamily(Family):
    """timm ``RexNet``: narrow each linear bottleneck's expansion (no block can be dropped)."""

    name = "rexnet"
    description = "ReXNet: expansion width per block (every block widens the network, so none is dropped)"
    examples = ("rexnet_100", "rexnet_150", "rexnetr_100")
    kinds = (RexNet,)

    def unsupported(self, model: nn.Module) -> str | None:
        features = getattr(model, STAGE, None)
        if not isinstance(features, nn.Sequential) or len(features) == 0:
            return f"{STAGE} (missing or empty)"
        for j, block in enumerate(features):
            last = j == len(features) - 1
            if not (_block_ok(block) or (last and type(block) is ConvNormAct)):
                return f"{STAGE}.{j} ({type(block).__name__})"
        return None

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return tuple(
            tuple(
                BlockChoices(
                    name=name,
                    removable=False,  # its output is wider than its input: the partial residual needs it
                    width_base=cast(nn.Conv2d, block.get_submodule("conv_dw.conv")).out_channels,
                    widths=WIDTH_GRID if block.conv_exp is not None else (1.0,),
                )
                for name, block in stage
            )
            for stage in _stages(model)
        )

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for stage, stage_spec, choices in zip(_stages(model), spec.stages, self.describe(model)):
            for (name, block), b, c in zip(stage, stage_spec, choices):
                entry: dict[str, Any] = {"keep": True}
                if b.width < 1.0:
                    entry["channels"] = _shrink_expansion(block, c.channels(b.width), importance)
                recipe[name] = entry
        return {"blocks": recipe}


def _shrink_expansion(block: nn.Module, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` expansion channels of a bottleneck with ``conv_exp``; the kept indices."""
    exp, dw, pwl = (cast(ConvNormAct, getattr(block, n)) for n in ("conv_exp", "conv_dw", "conv_pwl"))
    se = block.se
    views: list[TensorDim] = [(exp.conv.weight, 0), (dw.conv.weight, 0), (pwl.conv.weight, 1)]
    if isinstance(se, SEModule):
        views += [(se.fc1.weight, 1), (se.fc2.weight, 0)]
    idx = importance.select(views, channels)
    for unit in (exp, dw):
        slice_conv(cast(nn.Conv2d, unit.conv), out_idx=idx)
        slice_norm(unit.bn, idx)
    if isinstance(se, SEModule):
        slice_conv(se.fc1, in_idx=idx)
        slice_conv(se.fc2, out_idx=idx)
    slice_conv(cast(nn.Conv2d, pwl.conv), in_idx=idx)
    return idx.tolist()
