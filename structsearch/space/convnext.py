"""Adapter for timm's ConvNeXt (V1 and V2): depth per stage and the MLP hidden width of every block.

timm's ``ConvNeXt`` is ``stem -> stages.0..3 -> head``; each ``ConvNeXtStage`` is a ``downsample``
(identity in stage 0) followed by ``blocks``, a ``Sequential`` of ``ConvNeXtBlock``:

    x + gamma * fc2(act(fc1(norm(conv_dw(x)))))        (ConvNeXt-V2: a GRN between act and fc2)

The depthwise 7x7 conv, the norm and the layer scale ``gamma`` all work on the block's output width,
the residual stream shared with the stage's other blocks, so they never change. What shrinks:

* ``width`` -- the MLP hidden size (4x the stream in timm's models): ``fc1`` output rows, the GRN's
  per-channel weight and bias (V2) and ``fc2`` input columns, ranked by the L1 norm of ``fc1``'s rows
  and ``fc2``'s columns (:mod:`structsearch.pruning.mlp`). The MLP may be ``nn.Linear`` on
  channels-last pixels or 1x1 convs (``conv_mlp``: atto ... nano); both slice the same way. A GRN
  normalises over the hidden channels, so a narrowed V2 block only approximates the teacher's;
  the identity spec is exact.
* ``keep`` -- a block whose shortcut is the identity (every block timm builds: the stage's stride and
  width change happen in its ``downsample``) can be dropped; each stage keeps at least one block.

Feature KD taps ``stages.0..3``: their output widths never change (:mod:`structsearch.distill.taps`).
Not handled (``handles`` is False, so the user gets the "no adapter" error): ConvNeXt built from
blocks or MLPs other than timm's own (e.g. a gated MLP), since their hidden units could not be sliced
by the shared MLP code.
"""

from __future__ import annotations

from typing import Any

from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_mlp, sliceable_mlp
from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec


def _stages(model: nn.Module) -> list[ConvNeXtStage]:
    return list(getattr(model, "stages", ()))


def _block_supported(block: nn.Module) -> bool:
    """timm's own block (exact type: a subclass may compute something else) with a sliceable MLP."""
    return type(block) is ConvNeXtBlock and sliceable_mlp(block.get_submodule("mlp"))


def _unsupported(model: nn.Module) -> str | None:
    """The first stage or block of a ``ConvNeXt`` the adapter cannot slice, named (None: all can be)."""
    stages = _stages(model)
    if not stages:
        return "stages (none)"
    for i, s in enumerate(stages):
        blocks = getattr(s, "blocks", None)
        if type(s) is not ConvNeXtStage or not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
            return f"stages.{i} ({type(s).__name__})"
        for j, block in enumerate(blocks):
            if not _block_supported(block):
                mlp = getattr(block, "mlp", None)
                return f"stages.{i}.blocks.{j} ({type(block).__name__}{f' with a {type(mlp).__name__}' if mlp else ''})"
    return None


@register_family
class ConvNeXtFamily(Family):
    """timm ``ConvNeXt``: drop blocks inside a stage, narrow each block's MLP hidden width."""

    name = "convnext"
    description = "ConvNeXt V1/V2: depth per stage and MLP hidden width (expansion) per block"
    examples = ("convnext_atto", "convnext_tiny", "convnextv2_atto")
    kinds = (ConvNeXt,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return tuple(
            tuple(
                BlockChoices(
                    name=f"stages.{i}.blocks.{j}",
                    removable=isinstance(block.shortcut, nn.Identity),
                    width_base=hidden_width(block.get_submodule("mlp")),
                )
                for j, block in enumerate(stage.blocks)
            )
            for i, stage in enumerate(_stages(model))
        )

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        for stage, stage_spec, choices in zip(_stages(model), spec.stages, self.describe(model)):
            for block, b, c in zip(stage.blocks, stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    entry["channels"] = shrink_mlp(block.get_submodule("mlp"), c.channels(b.width), importance)
                recipe[c.name] = entry
            stage.blocks = keep_blocks(stage.blocks, [b.keep for b in stage_spec])
        return {"blocks": recipe}
