"""Adapter for timm's ``Eva`` Vision Transformers (EVA-02, DINOv3, RoPE ViTs): depth and MLP hidden size.

timm builds EVA-02, DINOv3 and its RoPE ViTs as ``Eva``: a patch embedding, prefix tokens (class and
register tokens), then ``blocks``, a ``ModuleList`` of pre-norm (``EvaBlock``) or post-norm
(``EvaBlockPostNorm``) transformer blocks run with rotary position embeddings, then the head. They
are the strongest public ViT teachers, so they are what a user distils from. All blocks form a
single stage; every block is residual with the same token shape in and out. What shrinks:

* ``keep`` -- any block (the stage keeps at least one). The rotary embeddings depend on the token
  grid only, so they are the same for every block that remains.
* ``width`` -- the MLP hidden size: timm's ``Mlp`` (DINOv3 S/B/L, RoPE ViTs) through
  :func:`structsearch.pruning.mlp.shrink_mlp`; the gated ``SwiGLU`` (DINOv3 H+, EVA-02 with
  ``scale_mlp``) and ``GluMlp`` (EVA-02) through :func:`structsearch.pruning.mlp.shrink_gated`,
  which keeps each hidden unit's value and gate together.

The attention heads stay: ``EvaAttention`` and ``AttentionRope`` reshape their output to the block's
width, so a head cannot be cut without rewriting their forward. Each kept block records the teacher
block it came from, as the ViT adapter's do, so ViT feature KD (:mod:`structsearch.distill.vit_kd`)
pairs their token states; attention maps are not compared (the rotary embeddings are applied inside
the attention, where a hook on its projections cannot see them). After blocks are dropped,
``feature_info`` lists the remaining ones. Subclasses and other block parts are refused (the "no
adapter" error).
"""

from __future__ import annotations

from typing import Any

from timm.layers import AttentionRope, Mlp
from timm.models.eva import Eva, EvaAttention, EvaBlock, EvaBlockPostNorm
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import gated_width, hidden_width, shrink_gated, shrink_mlp, sliceable_gated, sliceable_mlp
from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec
from structsearch.space.vit import refresh_block_feature_info, restore_block_origins, tag_origin

#: The one stage: timm keeps every transformer block in ``model.blocks``.
STAGE = "blocks"

#: The attention modules an ``Eva`` block is built with (kept as they are; exact types).
ATTENTIONS: tuple[type[nn.Module], ...] = (EvaAttention, AttentionRope)


def _plain_mlp(mlp: nn.Module) -> bool:
    """timm's ``Mlp`` on tokens with a sliceable hidden norm."""
    return type(mlp) is Mlp and sliceable_mlp(mlp) and isinstance(mlp.get_submodule("fc1"), nn.Linear)


def _block_ok(block: nn.Module) -> bool:
    mlp = getattr(block, "mlp", None)
    return (
        type(block) in (EvaBlock, EvaBlockPostNorm)
        and type(getattr(block, "attn", None)) in ATTENTIONS
        and isinstance(mlp, nn.Module)
        and (_plain_mlp(mlp) or sliceable_gated(mlp))
    )


def _mlp_width(mlp: nn.Module) -> int:
    return gated_width(mlp) if sliceable_gated(mlp) else hidden_width(mlp)


@register_family
class EvaFamily(Family):
    """timm ``Eva``: drop transformer blocks, narrow each block's (gated) MLP."""

    name = "eva"
    description = "EVA-02, DINOv3 and RoPE ViTs (timm Eva): depth and MLP hidden size (plain or gated)"
    examples = ("vit_small_patch16_dinov3", "eva02_tiny_patch14_224", "vit_medium_patch16_rope_reg1_gap_256")
    kinds = (Eva,)

    def unsupported(self, model: nn.Module) -> str | None:
        blocks = getattr(model, STAGE, None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            return f"{STAGE} (missing or empty)"
        for j, block in enumerate(blocks):
            if not _block_ok(block):
                parts = [type(m).__name__ for m in (getattr(block, "attn", None), getattr(block, "mlp", None)) if m]
                return f"{STAGE}.{j} ({type(block).__name__}{' of ' + ', '.join(parts) if parts else ''})"
        return None

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return (
            tuple(
                BlockChoices(name=f"{STAGE}.{j}", removable=True, width_base=_mlp_width(block.get_submodule("mlp")))
                for j, block in enumerate(getattr(model, STAGE))
            ),
        )

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        assert isinstance(model, Eva), "a model handles() accepted"
        (choices,) = self.describe(model)
        (stage_spec,) = spec.stages
        blocks: nn.ModuleList = getattr(model, STAGE)
        recipe: dict[str, Any] = {}
        for j, (block, b, c) in enumerate(zip(blocks, stage_spec, choices)):
            entry: dict[str, Any] = {"keep": b.keep}
            tag_origin(block, j)  # every head: they stay
            if b.keep and b.width < 1.0:
                mlp = block.get_submodule("mlp")
                shrink = shrink_gated if sliceable_gated(mlp) else shrink_mlp
                entry["channels"] = shrink(mlp, c.channels(b.width), importance)
            recipe[c.name] = entry
        kept = keep_blocks(nn.Sequential(*blocks), [b.keep for b in stage_spec])
        setattr(model, STAGE, nn.ModuleList(kept))
        refresh_block_feature_info(model)
        return {"blocks": recipe}

    def restore_origins(self, model: nn.Module, recipe: dict[str, Any]) -> None:
        restore_block_origins(getattr(model, STAGE), recipe)
