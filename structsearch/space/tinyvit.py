"""Adapter for timm's TinyViT: depth per stage, and per block the MBConv expansion width, the MLP
hidden size and whole attention heads.

TinyViT (Wu et al., ECCV 2022) is ``patch_embed -> stages.0..3 -> head`` on NCHW maps:

* ``stages.0`` is a ``ConvLayer`` of ``MBConv`` blocks (1x1 expand -> 3x3 depthwise -> 1x1 project,
  each conv with a BatchNorm, residual): their ``width`` is the expansion, sliced as a MobileNet
  block's (:class:`~structsearch.space.mobilenet.ChannelGroup`);
* ``stages.1..`` are ``TinyVitStage``\\ s: a ``PatchMerging`` downsample (kept as it is) and
  ``TinyVitBlock``\\ s on channels-last maps -- windowed attention, a depthwise ``local_conv`` and a
  ``NormMlp``, each residual on the stage's width. ``width`` is the MLP hidden size (``fc1`` rows,
  ``fc2`` columns; its ``norm`` is on the block's input and stays). ``heads`` keeps whole heads of
  TinyViT's ``Attention``, whose ``qkv`` rows are laid out per head, ``(head, q|k|v)`` with
  ``key_dim`` rows for q and k and ``val_dim`` for v (unlike ViT's ``(q|k|v, head)``), with each kept
  head's ``proj`` columns and its row of ``attention_biases``; ``key_dim`` and the softmax scale stay,
  so a kept head computes what it did in the teacher.

Every block can be dropped (same shape in and out); each stage keeps at least one. Feature KD taps
``stages.0..N-1``. Subclasses and other blocks are not handled (the user gets the "no adapter" error).
"""

from __future__ import annotations

from typing import cast

from timm.models.tiny_vit import (
    Attention,
    ConvLayer,
    ConvNorm,
    MBConv,
    NormMlp,
    TinyVit,
    TinyVitBlock,
    TinyVitStage,
)
from torch import nn

from structsearch.pruning.heads import shrink_biased_heads
from structsearch.pruning.importance import Importance
from structsearch.pruning.mlp import shrink_hidden
from structsearch.space.mobilenet import ChannelGroup
from structsearch.space.registry import register_family
from structsearch.space.staged import StagedFamily


def _conv_norm(m: nn.Module, depthwise: bool = False) -> bool:
    """timm's ``ConvNorm``: a plain conv (dense, or depthwise when asked) and its BatchNorm."""
    if type(m) is not ConvNorm or type(m.conv) is not nn.Conv2d or type(m.bn) is not nn.BatchNorm2d:
        return False
    conv = cast(nn.Conv2d, m.conv)
    return conv.groups == (conv.in_channels if depthwise else 1)


def _mbconv_group(block: MBConv) -> ChannelGroup:
    """The MBConv's expansion channels: ``conv1``'s outputs, ``conv2`` (depthwise), ``conv3``'s inputs."""
    c1, c2, c3 = (cast(ConvNorm, block.get_submodule(n)) for n in ("conv1", "conv2", "conv3"))
    return ChannelGroup(
        expand=cast(nn.Conv2d, c1.conv),
        norms=(c1.bn, c2.bn),
        depthwise=cast(nn.Conv2d, c2.conv),
        se=nn.Identity(),
        project=cast(nn.Conv2d, c3.conv),
    )


def _plain_block(block: nn.Module) -> bool:
    if type(block) is MBConv:
        return all(_conv_norm(block.get_submodule(n), n == "conv2") for n in ("conv1", "conv2", "conv3"))
    if type(block) is not TinyVitBlock:
        return False
    attn, mlp = block.attn, block.mlp
    return (
        type(attn) is Attention
        and isinstance(attn.qkv, nn.Linear)
        and isinstance(attn.proj, nn.Linear)
        and attn.qkv.out_features == attn.num_heads * (2 * attn.key_dim + attn.val_dim)
        and attn.proj.in_features == attn.out_dim == attn.num_heads * attn.val_dim
        and type(mlp) is NormMlp
        and isinstance(mlp.fc1, nn.Linear)
        and isinstance(mlp.fc2, nn.Linear)
    )


def _shrink_heads(block: TinyVitBlock, heads: int, importance: Importance) -> list[int]:
    """Keep the ``heads`` most important heads of the block's attention with their biases;
    ``forward`` reads ``num_heads`` and ``out_dim``."""
    attn = block.attn
    kept = shrink_biased_heads(attn, attn.qkv, attn.proj, heads, importance)
    block.num_heads = len(kept)
    attn.out_dim = len(kept) * attn.val_dim
    return kept.tolist()


@register_family
class TinyVitFamily(StagedFamily):
    """timm ``TinyVit``: drop blocks inside a stage; narrow MBConv expansions, MLPs and attention heads."""

    name = "tinyvit"
    description = "TinyViT: depth per stage, MBConv expansion, MLP hidden size and attention heads per block"
    examples = ("tiny_vit_5m_224", "tiny_vit_11m_224")
    kinds = (TinyVit,)
    stage_kinds = (ConvLayer, TinyVitStage)  # PatchMerging downsamples are kept as they are

    def block_ok(self, block: nn.Module) -> bool:
        return _plain_block(block)

    def width_base(self, block: nn.Module) -> int:
        if isinstance(block, MBConv):
            return _mbconv_group(block).width
        return cast(TinyVitBlock, block).mlp.fc1.out_features

    def heads_base(self, block: nn.Module) -> int | None:
        return block.attn.num_heads if isinstance(block, TinyVitBlock) else None

    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        if isinstance(block, MBConv):
            group = _mbconv_group(block)
            idx = group.select(importance, channels)
            group.apply(idx)
            return {"channels": idx.tolist()}
        mlp = cast(TinyVitBlock, block).mlp  # its norm is on the input: not sliced
        return {"channels": shrink_hidden(mlp.fc1, mlp.fc2, channels, importance)}

    def shrink_heads(self, block: nn.Module, heads: int, importance: Importance) -> list[int]:
        return _shrink_heads(cast(TinyVitBlock, block), heads, importance)
