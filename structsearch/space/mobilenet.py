"""Adapter for timm's inverted-residual nets: MobileNetV2, EfficientNet, MNASNet, MobileNetV3, MobileNetV4, ...

timm builds all of them from the same blocks (``timm/models/_efficientnet_blocks.py``): the model
has a stem (``conv_stem -> bn1``), then ``model.blocks``, a ``Sequential`` of stages, each a
``Sequential`` of blocks. Models are handled when they are an ``EfficientNet`` (mobilenetv2_*,
efficientnet_*, efficientnetv2_*, mnasnet_*, mixnet_*, tinynet_*, fbnetc, spnasnet, ...) or a
``MobileNetV3`` (mobilenetv3_*, lcnet_*, mobilenetv4_conv_* and mobilenetv4_hybrid_*) *and* every block is one of:

* ``InvertedResidual`` (MBConv: ``conv_pw -> bn1 -> conv_dw -> bn2 -> se -> conv_pwl -> bn3``) --
  its internal width is the expansion: ``conv_pw`` out, ``bn1``, the depthwise ``conv_dw`` (both
  sides), ``bn2``, the SE gate's ``conv_reduce`` in / ``conv_expand`` out (its reduced channels
  stay), ``conv_pwl`` in;
* ``UniversalInvertedResidual`` (MobileNetV4's UIB: ``dw_start -> pw_exp -> dw_mid -> se -> pw_proj
  -> dw_end -> layer_scale``) -- the expansion the same way (``pw_exp`` out, its norm, the optional
  depthwise ``dw_mid``, ``se``, ``pw_proj`` in); ``dw_start``, ``dw_end`` and the layer scale act on
  the block's input or output, the stream, and stay;
* ``EdgeResidual`` (FusedMBConv: ``conv_exp -> bn1 -> se -> conv_pwl -> bn2``) -- the expansion
  the same way, without a depthwise conv;
* ``DepthwiseSeparableConv`` (``conv_dw -> bn1 -> se -> conv_pw -> bn2``) -- no expansion, so its
  internal width *is its input*: it can only narrow together with whatever produces that input
  (the stem, or the output conv/norm of the previous block), and only when neither this block nor
  that producer adds a residual (a residual ties the width to the stream). That holds for the
  first block of MobileNetV2 / EfficientNet-B0 (the stem feeds it) and for every block of
  MobileNetV1. Otherwise the block gets ``widths=(1.0,)``;
* ``ConvBnAct`` (a conv, a norm, an activation: MobileNetV4's first stages and its last 1x1 conv,
  EfficientNetV2 / EdgeTPU stems of stages) -- no internal width either. One that follows another
  ``ConvBnAct`` of its stage without a residual (MobileNetV4's first stages: a fused inverted
  residual written as two blocks) narrows the channels between them, like a DS block with its
  producer. Every other gets ``widths=(1.0,)``: its input is the residual stream, a stage's input
  (which feature KD compares at the teacher's width), or the output of a conv whose input another
  block already narrows (whose cost would then be bilinear in two blocks' widths);
* ``CondConvResidual`` -- an ``InvertedResidual`` with per-example expert kernels; its weights are
  not plain convolutions, so it gets ``widths=(1.0,)`` (it can still be dropped);
* ``MobileAttention`` (MobileNetV4's hybrids: multi-query attention, one key and one value
  projection shared by every query head) -- no internal width; its *query heads* are searched: a
  head's rows of the query projection and its columns of the output projection (both laid out
  per head), so a kept head computes what it did in the teacher. Any other attention keeps its heads.

A block whose layers are not the plain ones assumed above (MixNet's ``MixedConv2d``, grouped
instead of depthwise convs, GroupNorm/EvoNorm, anti-aliasing, space-to-depth) keeps its full
width but may still be dropped: slicing those would need layer-specific code and is left out
rather than approximated. Models containing other blocks are not handled.

Every block with a residual connection (``has_skip``: stride 1, same in/out channels, no
``noskip``) can be dropped -- its removal leaves the identity the skip already carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from timm.layers import ConvNormAct
from timm.layers.attention2d import MultiQueryAttention2d
from timm.models._efficientnet_blocks import (
    ConvBnAct,
    DepthwiseSeparableConv,
    EdgeResidual,
    InvertedResidual,
    MobileAttention,
    SqueezeExcite,
    UniversalInvertedResidual,
)
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import Tensor, nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import group_channels, is_batch_norm, keep_blocks, slice_conv, slice_norm
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import register_family
from structsearch.space.spec import WIDTH_GRID, ArchSpec

#: Block types this adapter knows (``CondConvResidual`` is a subclass of ``InvertedResidual``).
KNOWN_BLOCKS: tuple[type[nn.Module], ...] = (
    InvertedResidual,
    UniversalInvertedResidual,
    EdgeResidual,
    DepthwiseSeparableConv,
    ConvBnAct,
    MobileAttention,
)
#: Model classes built from those blocks with a ``conv_stem -> bn1 -> blocks`` trunk.
KNOWN_MODELS: tuple[type[nn.Module], ...] = (EfficientNet, MobileNetV3)


# -- what can be sliced ------------------------------------------------------------------------
def _is_conv(m: nn.Module) -> bool:
    """A plain dense convolution (``Conv2d`` or a subclass such as timm's ``Conv2dSame``)."""
    return isinstance(m, nn.Conv2d) and m.groups == 1


def _is_depthwise(m: nn.Module) -> bool:
    """A depthwise convolution with channel multiplier 1 (sliceable on both sides by one index set)."""
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels


def _is_plain_se(m: nn.Module) -> bool:
    """No SE, or timm's ``SqueezeExcite`` over plain 1x1 convs (its channels are the block's)."""
    if isinstance(m, nn.Identity):
        return True
    return isinstance(m, SqueezeExcite) and _is_conv(m.conv_reduce) and _is_conv(m.conv_expand)


def _no_extras(block: nn.Module) -> bool:
    """No space-to-depth stem and no anti-aliasing pool (both carry channel-sized state)."""
    return getattr(block, "conv_s2d", None) is None and isinstance(getattr(block, "aa", nn.Identity()), nn.Identity)


# -- channel groups ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together: one block's internal width.

    ``expand`` produces the channels (its output is sliced), ``norms`` and the optional
    ``depthwise`` conv act on them channel by channel, ``se`` gates them, and ``project`` consumes
    them (its input is sliced). Nothing outside the group sees these channels, so any subset of
    them gives a smaller network computing a sub-function of the teacher.
    """

    expand: nn.Conv2d
    norms: tuple[nn.Module, ...]
    depthwise: nn.Conv2d | None
    se: nn.Module
    project: nn.Conv2d

    @property
    def width(self) -> int:
        return self.expand.out_channels

    def select(self, importance: Importance, k: int) -> Tensor:
        """The ``k`` most important channels by the producing filters, the depthwise filters and
        the consuming weights (L1 over all three for the default strategy)."""
        tensors: list[TensorDim] = [(self.expand.weight, 0), (self.project.weight, 1)]
        if self.depthwise is not None:
            tensors.insert(1, (self.depthwise.weight, 0))
        return importance.select(tensors, k)

    def apply(self, idx: Tensor) -> None:
        """Keep channels ``idx`` in every layer of the group, in place."""
        slice_conv(self.expand, out_idx=idx)
        for norm in self.norms:
            slice_norm(norm, idx)
        if self.depthwise is not None:
            slice_conv(self.depthwise, out_idx=idx)
        if isinstance(self.se, SqueezeExcite):
            slice_conv(self.se.conv_reduce, in_idx=idx)
            slice_conv(self.se.conv_expand, out_idx=idx)
        slice_conv(self.project, in_idx=idx)


def plain_group(
    expand: nn.Module, norms: tuple[nn.Module, ...], depthwise: nn.Module | None, project: nn.Module
) -> ChannelGroup | None:
    """The expansion of an inverted residual built from other modules than timm's MobileNet blocks
    (MobileViT, EfficientViT, EfficientFormerV2, TinyViT), when its layers are plain: dense
    ``expand`` and ``project`` convs, a depthwise conv between them (or none), BatchNorms (None
    otherwise)."""
    ok = (
        _is_conv(expand)
        and _is_conv(project)
        and (depthwise is None or _is_depthwise(depthwise))
        and all(is_batch_norm(n) for n in norms)
    )
    if not ok:
        return None
    dw = cast(nn.Conv2d, depthwise) if depthwise is not None else None
    return ChannelGroup(cast(nn.Conv2d, expand), norms, dw, nn.Identity(), cast(nn.Conv2d, project))


#: The conv and norm producing a unit's output, when that output can be narrowed on its own.
Producer = tuple[nn.Conv2d, nn.Module]


def _stem_output(model: nn.Module) -> Producer | None:
    """The stem's output layers (``conv_stem``, ``bn1``) when both are plain."""
    conv, norm = getattr(model, "conv_stem", None), getattr(model, "bn1", None)
    if conv is not None and norm is not None and _is_conv(conv) and is_batch_norm(norm):
        return conv, norm
    return None


def _block_output(block: nn.Module) -> Producer | None:
    """A block's output layers, unless a residual ties its output to the stream or they are not plain."""
    if getattr(block, "has_skip", True) or not _no_extras(block):
        return None
    if isinstance(block, InvertedResidual):
        conv, norm = block.conv_pwl, block.bn3
    elif isinstance(block, EdgeResidual):
        conv, norm = block.conv_pwl, block.bn2
    elif isinstance(block, DepthwiseSeparableConv):
        conv, norm = block.conv_pw, block.bn2
    elif isinstance(block, ConvBnAct):
        conv, norm = block.conv, block.bn1
    else:
        return None
    return (conv, norm) if _is_conv(conv) and is_batch_norm(norm) else None


def _inverted_residual_group(block: InvertedResidual) -> ChannelGroup | None:
    """The expansion channels of an MBConv block, or ``None`` when its layers are not plain."""
    ok = (
        _no_extras(block)
        and _is_conv(block.conv_pw)
        and is_batch_norm(block.bn1)
        and _is_depthwise(block.conv_dw)
        and is_batch_norm(block.bn2)
        and _is_plain_se(block.se)
        and _is_conv(block.conv_pwl)
    )
    if not ok:
        return None
    return ChannelGroup(block.conv_pw, (block.bn1, block.bn2), block.conv_dw, block.se, block.conv_pwl)


def plain_conv_norm(m: nn.Module, depthwise: bool = False, grouped: bool = False) -> bool:
    """timm's ``ConvNormAct`` with a plain dense conv (or a depthwise one, or any grouped one when
    asked), a BatchNorm and no anti-aliasing: the unit every ``ConvNormAct``-built family slices
    (MobileNetV4, CSPNet, ReXNet)."""
    if type(m) is not ConvNormAct:
        return False
    conv = cast(nn.Module, m.conv)
    conv_ok = _is_depthwise(conv) if depthwise else (isinstance(conv, nn.Conv2d) if grouped else _is_conv(conv))
    return conv_ok and is_batch_norm(m.bn) and isinstance(getattr(m, "aa", None), (nn.Identity, type(None)))


def _universal_group(block: UniversalInvertedResidual) -> ChannelGroup | None:
    """The expansion channels of a MobileNetV4 UIB block, or ``None`` when its layers are not plain."""
    mid = block.dw_mid
    ok = (
        plain_conv_norm(block.pw_exp)
        and (isinstance(mid, nn.Identity) or plain_conv_norm(mid, depthwise=True))
        and _is_plain_se(block.se)
        and plain_conv_norm(block.pw_proj)
    )
    if not ok:
        return None
    if isinstance(mid, ConvNormAct):
        return ChannelGroup(block.pw_exp.conv, (block.pw_exp.bn, mid.bn), mid.conv, block.se, block.pw_proj.conv)
    return ChannelGroup(block.pw_exp.conv, (block.pw_exp.bn,), None, block.se, block.pw_proj.conv)


def _edge_residual_group(block: EdgeResidual) -> ChannelGroup | None:
    """The expansion channels of a FusedMBConv block, or ``None`` when its layers are not plain."""
    ok = (
        _no_extras(block)
        and _is_conv(block.conv_exp)
        and is_batch_norm(block.bn1)
        and _is_plain_se(block.se)
        and _is_conv(block.conv_pwl)
    )
    if not ok:
        return None
    return ChannelGroup(block.conv_exp, (block.bn1,), None, block.se, block.conv_pwl)


def _depthwise_separable_group(block: DepthwiseSeparableConv, producer: Producer | None) -> ChannelGroup | None:
    """The input channels of a DS block, narrowed together with the unit that produces them.

    Only when the block adds no residual (its input would be tied to its output) and its producer
    (stem or previous block) can narrow its output alone (see :func:`_block_output`).
    """
    if producer is None or block.has_skip:
        return None
    ok = (
        _no_extras(block)
        and _is_depthwise(block.conv_dw)
        and is_batch_norm(block.bn1)
        and _is_plain_se(block.se)
        and _is_conv(block.conv_pw)
    )
    if not ok:
        return None
    conv, norm = producer
    return ChannelGroup(conv, (norm, block.bn1), block.conv_dw, block.se, block.conv_pw)


def _conv_input_group(block: ConvBnAct, producer: Producer | None) -> ChannelGroup | None:
    """The input channels of a ``ConvBnAct``, narrowed together with the unit that produces them --
    as a DS block's, under the same conditions, with no depthwise conv in between."""
    if producer is None or block.has_skip or not (_no_extras(block) and _is_conv(block.conv)):
        return None
    conv, norm = producer
    return ChannelGroup(conv, (norm,), None, nn.Identity(), block.conv)


def _channel_group(block: nn.Module, producer: Producer | None, after: _Block | None) -> ChannelGroup | None:
    """The block's searchable internal width, or ``None`` when it keeps its full width; ``after`` is
    the block before it in its stage (None for a stage's first)."""
    if type(block) is InvertedResidual:  # not CondConvResidual: its expert kernels are no plain convs
        return _inverted_residual_group(block)
    if type(block) is UniversalInvertedResidual:
        return _universal_group(block)
    if isinstance(block, EdgeResidual):
        return _edge_residual_group(block)
    if isinstance(block, DepthwiseSeparableConv):
        return _depthwise_separable_group(block, producer)
    if type(block) is ConvBnAct and after is not None and type(after.module) is ConvBnAct and after.group is None:
        return _conv_input_group(block, producer)  # (``after``'s input fixed: its conv's cost stays linear)
    return None


def _query_heads(block: nn.Module) -> MultiQueryAttention2d | None:
    """A ``MobileAttention``'s multi-query attention when its query heads can be narrowed: plain 1x1
    query and output projections laid out per head (None: its heads stay)."""
    attn = getattr(block, "attn", None)
    if type(block) is not MobileAttention or type(attn) is not MultiQueryAttention2d:
        return None
    q, out = (cast(nn.Conv2d, part.get_submodule("proj")) for part in (attn.query, attn.output))
    per_head = (q.out_channels == attn.num_heads * attn.key_dim) and (
        out.in_channels == attn.num_heads * attn.value_dim
    )
    return attn if per_head and all(_is_conv(c) and c.kernel_size == (1, 1) for c in (q, out)) else None


def shrink_query_heads(attn: MultiQueryAttention2d, heads: int, importance: Importance) -> list[int]:
    """Keep the ``heads`` most important query heads (ranked by their query rows and output columns);
    the shared key and value stay, and so does the softmax scale (``key_dim`` is unchanged)."""
    q, out = (cast(nn.Conv2d, part.get_submodule("proj")) for part in (attn.query, attn.output))
    n, key_dim, value_dim = attn.num_heads, attn.key_dim, attn.value_dim
    views: list[TensorDim] = [(q.weight.view(n, key_dim, -1), 0), (out.weight.view(out.out_channels, n, -1), 1)]
    kept = importance.select(views, heads)
    slice_conv(q, out_idx=group_channels(kept, key_dim))
    slice_conv(out, in_idx=group_channels(kept, value_dim))
    attn.num_heads = len(kept)
    return kept.tolist()


def _nominal_width(block: nn.Module) -> int:
    """The internal width reported for a block whose width is fixed (for display only)."""
    if isinstance(block, InvertedResidual):
        return block.conv_pw.out_channels
    if isinstance(block, UniversalInvertedResidual):
        return block.pw_exp.conv.out_channels
    if isinstance(block, EdgeResidual):
        return block.conv_exp.out_channels
    if isinstance(block, DepthwiseSeparableConv):
        return block.conv_dw.out_channels
    if isinstance(block, MobileAttention):
        return block.norm.num_features  # the stream it attends over
    assert isinstance(block, ConvBnAct), "one of KNOWN_BLOCKS"
    return block.conv.out_channels


@dataclass(frozen=True)
class _Block:
    """One block of the model as the adapter sees it."""

    name: str
    module: nn.Module
    group: ChannelGroup | None

    def choices(self) -> BlockChoices:
        attn = _query_heads(self.module)
        return BlockChoices(
            name=self.name,
            removable=bool(self.module.has_skip),
            width_base=self.group.width if self.group is not None else _nominal_width(self.module),
            widths=WIDTH_GRID if self.group is not None else (1.0,),
            heads_base=attn.num_heads if attn is not None else None,
        )


def _blocks(model: nn.Module) -> list[list[_Block]]:
    """Every block, stage by stage, with its channel group (computed on the model as it is now)."""
    producer = _stem_output(model)
    stages: list[list[_Block]] = []
    for i, stage in enumerate(_known_stages(model)):
        blocks: list[_Block] = []
        for j, block in enumerate(stage):
            group = _channel_group(block, producer, after=blocks[-1] if blocks else None)
            blocks.append(_Block(f"blocks.{i}.{j}", block, group))
            producer = _block_output(block)
        stages.append(blocks)
    return stages


def _stages(model: nn.Module) -> list[nn.Sequential] | None:
    """The stages of ``model.blocks``; None unless it is a ``Sequential`` of ``Sequential`` stages."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return None
    stages = [stage for stage in blocks if isinstance(stage, nn.Sequential)]
    return stages if len(stages) == len(blocks) else None


def _unknown_block(model: nn.Module) -> str | None:
    """The first block of ``model`` this adapter does not know, named with its type (None: all known)."""
    stages = _stages(model)
    if stages is None:
        return "blocks (not a Sequential of stages)"
    for i, stage in enumerate(stages):
        for j, b in enumerate(stage):
            if not (isinstance(b, KNOWN_BLOCKS) and hasattr(b, "has_skip")):
                return f"blocks.{i}.{j} ({type(b).__name__})"
    return None


def _known_stages(model: nn.Module) -> list[nn.Sequential]:
    """The stages of a model :meth:`MobileNetFamily.handles` accepted."""
    stages = _stages(model)
    assert stages is not None, "a model MobileNetFamily.handles accepted"
    return stages


@register_family
class MobileNetFamily(Family):
    """Depth (residual blocks) and expansion width (per block) of timm's inverted-residual nets."""

    name = "mobilenet"
    description = (
        "inverted-residual nets: MobileNetV2, EfficientNet, MNASNet, MobileNetV3, MobileNetV4 (conv and hybrid), "
        "... (depth, expansion width, query heads of MobileNetV4's attention)"
    )
    examples = ("mobilenetv2_100", "efficientnet_b0", "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium")
    kinds = KNOWN_MODELS

    def unsupported(self, model: nn.Module) -> str | None:
        """The first block of a type this adapter does not know. Models with other blocks are refused
        rather than half-supported: dropping or narrowing them has not been checked."""
        return _unknown_block(model)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return tuple(tuple(b.choices() for b in stage) for stage in _blocks(model))

    def cost_owners(self, model: nn.Module) -> dict[str, str]:
        """The producer conv and norm of every block whose input narrows (DS blocks, ``ConvBnAct``)."""
        names = {id(m): name for name, m in model.named_modules()}
        owners: dict[str, str] = {}
        for stage in _blocks(model):
            for b in stage:
                if b.group is not None and isinstance(b.module, (DepthwiseSeparableConv, ConvBnAct)):
                    owners[names[id(b.group.expand)]] = owners[names[id(b.group.norms[0])]] = b.name
        return owners

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        """Narrow, then drop, in place; the recipe's ``channels`` are the kept internal channels.

        For a ``DepthwiseSeparableConv`` or a ``ConvBnAct`` those are its input channels, kept in its
        producer (the stem's ``conv_stem``/``bn1`` or the previous block's output conv/norm) as well. All
        channels are chosen from the unmodified teacher weights before any layer is sliced, so one
        block's choice never depends on another's.
        """
        stages = _blocks(model)
        recipe: dict[str, Any] = {}
        chosen: list[tuple[ChannelGroup, Tensor]] = []
        for stage, stage_spec in zip(stages, spec.stages):
            for block, b in zip(stage, stage_spec):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0 and block.group is not None:
                    idx = block.group.select(importance, block.choices().channels(b.width))
                    chosen.append((block.group, idx))
                    entry["channels"] = idx.tolist()
                attn = _query_heads(block.module)
                if b.keep and attn is not None and b.heads is not None and b.heads < attn.num_heads:
                    entry["heads"] = shrink_query_heads(attn, b.heads, importance)  # in no channel group
                recipe[block.name] = entry
        for group, idx in chosen:
            group.apply(idx)
        _drop_blocks(model, [[b.keep for b in stage_spec] for stage_spec in spec.stages])
        return {"blocks": recipe}


def _drop_blocks(model: nn.Module, keep: Sequence[Sequence[bool]]) -> None:
    """Replace every stage by a ``Sequential`` of its kept blocks (the spec keeps one per stage)."""
    model.blocks = nn.Sequential(*[keep_blocks(stage, list(k)) for stage, k in zip(_known_stages(model), keep)])
