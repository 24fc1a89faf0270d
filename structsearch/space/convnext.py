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

from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import hidden_width, shrink_mlp, sliceable_mlp
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


@register_family
class ConvNeXtFamily(StagedFamily):
    """timm ``ConvNeXt``: drop blocks inside a stage, narrow each block's MLP hidden width."""

    name = "convnext"
    description = "ConvNeXt V1/V2: depth per stage and MLP hidden width (expansion) per block"
    examples = ("convnext_atto", "convnext_tiny", "convnextv2_atto")
    kinds = (ConvNeXt,)
    stage_kinds = (ConvNeXtStage,)

    def block_ok(self, block: nn.Module) -> bool:
        # timm's own block (exact type: a subclass may compute something else) with a sliceable MLP
        return type(block) is ConvNeXtBlock and sliceable_mlp(block.get_submodule("mlp"))

    def refused(self, block: nn.Module) -> str:
        mlp = getattr(block, "mlp", None)
        return f"{type(block).__name__}{f' with a {type(mlp).__name__}' if mlp else ''}"

    def removable(self, block: nn.Module) -> bool:
        return isinstance(block.shortcut, nn.Identity)

    def width_base(self, block: nn.Module) -> int:
        return hidden_width(block.get_submodule("mlp"))

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        return {"channels": shrink_mlp(block.get_submodule("mlp"), channels, importance)}
