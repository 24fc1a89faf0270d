"""Adapter for timm's Vision Transformers (ViT, DeiT, distilled DeiT): depth, MLP width, heads.

All transformer blocks form a single stage. Every block is a residual ``x + f(x)`` with the same
token shape in and out, so any block can be dropped (the stage keeps at least one). Inside a block
two things shrink, while the embedding dimension (the residual stream shared by every block, the
position embedding and the head) never changes:

* ``width`` -- the MLP hidden size: ``fc1`` output rows, the optional hidden ``norm`` and ``fc2``
  input columns, ranked by the L1 norm of those rows and columns;
* ``heads`` -- whole attention heads, each keeping its ``head_dim``: the head's q, k and v rows of
  ``qkv`` (layout ``(3, heads, head_dim)``), its ``proj`` input columns and, where present, its
  rows of the output ``gate`` and channels of the scale ``norm``. Because ``head_dim`` and hence
  the softmax scale stay the same, a kept head computes exactly what it did in the teacher.
  ``qk_norm`` normalises over ``head_dim`` and needs no change.

Each block of a student records where it came from (``block.teacher_index``, ``attn.teacher_heads``,
plain attributes outside the state dict), so ViT feature KD (:mod:`structsearch.distill.vit_kd`)
pairs student blocks and heads with the teacher's they were cut from.

A LayerNorm over a sliced width (``scale_mlp_norm`` / ``scale_attn_norm`` models) is sliced with
it; it then normalises over the kept channels only, so the identity spec stays exact but a
narrowed block only approximates the teacher's (the distillation proxy recovers the rest).
After blocks are dropped, ``feature_info`` is rebuilt for the remaining blocks; ``forward`` and
``forward_intermediates`` only read ``len(model.blocks)``.

Supported: :class:`~timm.models.vision_transformer.VisionTransformer` and its distilled DeiT
subclass (which differs only in its extra token and second head, both outside the blocks; in
``distilled_training`` mode its training forward returns two logits, a matter for the trainer) built
from the standard pre-norm ``Block`` with timm's ``Attention`` and ``Mlp``. Not supported (not
``handles``): post-norm ``ResPostBlock`` (the same slicing would apply; no example needs it yet), parallel blocks (their fused in/out projections would
need their own slicing), ``DiffAttention`` (heads are paired), gated MLPs (``GluMlp``/SwiGLU:
the hidden units are split into value and gate halves), convolutional MLPs, and hidden / scale
norms other than LayerNorm (``slice_norm`` cannot slice e.g. ``RmsNorm``). Exact type checks keep
unknown subclasses, whose ``forward`` may differ, out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from timm.layers import Attention, Mlp
from timm.models.eva import Eva
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from structsearch.errors import CheckpointError
from structsearch.pruning.heads import head_views, slice_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_mlp, sliceable_mlp
from structsearch.pruning.ops import keep_blocks, slice_linear, slice_norm
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import ArchSpec

#: The one stage: timm keeps every transformer block in ``model.blocks``.
STAGE = "blocks"


# -- what the adapter understands -----------------------------------------------------------------
def _gate(attn: nn.Module) -> nn.Module | None:
    """The optional per-channel output gate of ``Attention`` (absent in older timm releases)."""
    return getattr(attn, "gate", None)


def _sliceable_norm(norm: nn.Module) -> bool:
    """Attention scale norms we can narrow: none at all, or a LayerNorm over the sliced channels."""
    return isinstance(norm, (nn.Identity, nn.LayerNorm))


def _plain_attention(attn: nn.Module) -> bool:
    """timm's ``Attention`` (not a subclass) with one fused qkv projection of ``3 * attn_dim`` rows."""
    return (
        type(attn) is Attention
        and isinstance(attn.qkv, nn.Linear)
        and isinstance(attn.proj, nn.Linear)
        and attn.qkv.out_features == 3 * attn.attn_dim == 3 * attn.num_heads * attn.head_dim
        and (_gate(attn) is None or isinstance(_gate(attn), nn.Linear))
        and _sliceable_norm(attn.norm)
    )


def _plain_mlp(mlp: nn.Module) -> bool:
    """timm's two-layer ``Mlp`` on tokens (linear, not 1x1 convolutions), with a sliceable hidden norm."""
    return type(mlp) is Mlp and isinstance(mlp.fc1, nn.Linear) and sliceable_mlp(mlp)


def plain_block(block: nn.Module) -> bool:
    """The standard pre-norm block whose attention and MLP we know how to slice."""
    return type(block) is Block and _plain_attention(block.attn) and _plain_mlp(block.mlp)


def _unsupported(model: nn.Module) -> str | None:
    """The first block of a ``VisionTransformer`` that is not the plain block we slice (None: none)."""
    blocks = getattr(model, STAGE, None)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        return f"{STAGE} (missing or empty)"
    for j, b in enumerate(blocks):
        if not plain_block(b):
            parts = [
                f"{type(m).__name__}" for m in (getattr(b, "attn", None), getattr(b, "mlp", None)) if m is not None
            ]
            return f"{STAGE}.{j} ({type(b).__name__}{' of ' + ', '.join(parts) if parts else ''})"
    return None


# -- surgery on one block -------------------------------------------------------------------------
def shrink_heads(attn: Attention, heads: int, importance: Importance) -> list[int]:
    """Keep the ``heads`` most important attention heads of ``attn``, each with its full ``head_dim``
    (ranked by their ``qkv`` rows and ``proj`` columns, and the output gate's rows where present).

    ``Attention.forward`` reshapes ``qkv`` output with ``num_heads``/``head_dim`` and the attention
    output with ``attn_dim``, so both attributes are updated along with the weights.
    """
    views = head_views(attn.qkv, attn.proj, attn.num_heads)
    gate = _gate(attn)
    if isinstance(gate, nn.Linear):  # the only kind of gate _plain_attention accepts
        views.append((gate.weight.view(attn.num_heads, attn.head_dim, -1), 0))
    kept = importance.select(views, heads)
    channels = slice_heads(attn.qkv, attn.proj, attn.num_heads, kept)
    if isinstance(gate, nn.Linear):
        slice_linear(gate, out_idx=channels)
    if not isinstance(attn.norm, nn.Identity):
        slice_norm(attn.norm, channels)
    attn.num_heads = len(kept)
    attn.attn_dim = len(kept) * attn.head_dim
    return kept.tolist()


def refresh_block_feature_info(model: VisionTransformer | Eva) -> None:
    """Point ``feature_info`` at the blocks that remain (timm lists one tap per block by name; the
    ViT and Eva adapters drop blocks).

    ``forward`` and ``forward_intermediates`` read ``len(model.blocks)`` and need nothing else;
    ``feature_info`` is what ``features_only`` wrappers and users read to find the taps.
    """
    old: list[dict[str, Any]] = list(getattr(model, "feature_info", None) or [])
    reduction = old[0].get("reduction") if old else None
    model.feature_info = [
        dict(module=f"{STAGE}.{i}", num_chs=model.embed_dim, reduction=reduction) for i in range(len(model.blocks))
    ]


def tag_origin(block: nn.Module, index: int, heads: Iterable[int] | None = None) -> None:
    """Record the teacher block and heads (default: all of its attention's) a block was cut from (ViT
    feature KD pairs them by it): plain attributes, what ``nn.Module.__setattr__`` does with them,
    outside the state dict."""
    attn = block.get_submodule("attn")
    block.__dict__["teacher_index"] = index
    all_heads: int = attn.num_heads  # type: ignore[assignment]  # an int attribute of every attention here
    attn.__dict__["teacher_heads"] = [int(h) for h in (heads if heads is not None else range(all_heads))]


def restore_block_origins(blocks: Iterable[nn.Module], recipe: dict[str, Any]) -> None:
    """Tag a reloaded student's ``blocks`` with their origins from the recipe it was saved with
    (entries ``blocks.J`` of the teacher's blocks, each ``keep`` and, where heads were cut, ``heads``)."""
    entries = sorted((int(name.rsplit(".", 1)[1]), e) for name, e in recipe["blocks"].items())
    kept = [(j, e) for j, e in entries if e["keep"]]
    blocks = list(blocks)
    if len(kept) != len(blocks):
        raise CheckpointError(f"the recipe keeps {len(kept)} blocks but the student has {len(blocks)}")
    for block, (j, entry) in zip(blocks, kept, strict=True):
        tag_origin(block, j, entry.get("heads"))


@register_family
class ViTFamily(Family):
    name = "vit"
    description = "Vision Transformers (ViT, DeiT): depth, MLP hidden size, attention heads"
    examples = ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224")
    kinds = (VisionTransformer,)

    def unsupported(self, model: nn.Module) -> str | None:
        return _unsupported(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        stage = tuple(
            BlockChoices(
                name=f"{STAGE}.{j}",
                removable=True,  # residual, same token shape in and out
                width_base=block.mlp.fc1.out_features,
                heads_base=block.attn.num_heads,
            )
            for j, block in enumerate(getattr(model, STAGE))
        )
        return (stage,)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        assert isinstance(model, VisionTransformer), "a model handles() accepted"
        (choices,) = self.describe(model)
        (stage_spec,) = spec.stages
        blocks: nn.Sequential = getattr(model, STAGE)
        recipe: dict[str, Any] = {}
        for j, (block, b, c) in enumerate(zip(blocks, stage_spec, choices)):
            attn, mlp = block.get_submodule("attn"), block.get_submodule("mlp")
            assert isinstance(attn, Attention) and isinstance(mlp, Mlp), "a block plain_block accepted"
            entry: dict[str, Any] = {"keep": b.keep}
            heads = list(range(attn.num_heads))
            if b.keep and b.width < 1.0:
                entry["channels"] = shrink_mlp(mlp, c.channels(b.width), importance)
            if b.keep and b.heads is not None and b.heads < (c.heads_base or 0):
                entry["heads"] = heads = shrink_heads(attn, b.heads, importance)
            tag_origin(block, j, heads)
            recipe[c.name] = entry
        setattr(model, STAGE, keep_blocks(blocks, [b.keep for b in stage_spec]))
        refresh_block_feature_info(model)
        return {"blocks": recipe}

    def restore_origins(self, model: nn.Module, recipe: dict[str, Any]) -> None:
        restore_block_origins(getattr(model, STAGE), recipe)
