"""Keeping whole attention heads of a fused-``qkv`` attention.

timm's ViT ``Attention`` and Swin's ``WindowAttention`` both project tokens with one ``qkv`` linear layer whose output rows are laid out
``(q|k|v, head, head_dim)`` and mix the heads back with ``proj``, whose input columns are laid out
``(head, head_dim)``.

A kept head keeps its ``head_dim`` (so the softmax scale, ``head_dim ** -0.5``, is unchanged) and
computes exactly what it did in the teacher; the caller slices what else its attention holds per
head (ViT's output gate and scale norm, Swin's relative position bias table) and updates the
module's head count. LeViT-style attentions lay their ``qkv`` out per
head instead and learn a bias per head (LeViT, TinyViT, EfficientFormer): :func:`shrink_biased_heads`.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import Tensor, nn

from structsearch.pruning.importance import Importance, TensorDim
from structsearch.pruning.ops import group_channels, slice_linear, slice_norm, slice_params


def head_views(qkv: nn.Linear, proj: nn.Linear, heads: int) -> list[TensorDim]:
    """``qkv``'s rows and ``proj``'s columns viewed so that the head is one indexed dimension (for
    :meth:`Importance.select`)."""
    head_dim = proj.in_features // heads
    return [
        (qkv.weight.view(3, heads, head_dim, -1), 1),  # rows laid out (q|k|v, head, head_dim)
        (proj.weight.view(-1, heads, head_dim), 1),  # input columns (head, head_dim)
    ]


def slice_heads(qkv: nn.Linear, proj: nn.Linear, heads: int, kept: Tensor) -> Tensor:
    """Keep the heads ``kept`` (of ``heads``) in ``qkv``'s rows and ``proj``'s columns; returns the
    kept heads' channels in the attention width (``kept`` expanded by ``head_dim``)."""
    attn_dim = proj.in_features
    if qkv.out_features != 3 * attn_dim or attn_dim % heads:
        raise ValueError(f"qkv has {qkv.out_features} rows for {heads} heads over {attn_dim} channels")
    channels = group_channels(kept, attn_dim // heads)
    slice_linear(qkv, out_idx=torch.cat([part * attn_dim + channels for part in range(3)]))
    slice_linear(proj, in_idx=channels)
    return channels


class BiasedAttention(Protocol):
    """What :func:`shrink_biased_heads` reads and sets on a LeViT-style attention."""

    num_heads: int
    key_dim: int
    val_dim: int
    attention_biases: nn.Parameter
    attention_bias_cache: dict[str, Tensor]


def shrink_biased_heads(
    attn: BiasedAttention,
    qkv: nn.Linear,
    proj: nn.Linear,
    heads: int,
    importance: Importance,
    qkv_norm: nn.Module | None = None,
) -> Tensor:
    """Keep the ``heads`` most important heads of a LeViT-style attention (LeViT's, TinyViT's and
    EfficientFormer's ``Attention``) and return them.

    These lay the rows of their ``qkv`` projection out per head, ``(head, q|k|v)`` with ``key_dim``
    rows for q and k and ``val_dim`` for v (``qkv(x).view(B, N, heads, -1).split(...)``), the columns
    of the output projection ``proj`` as ``(head, val_dim)``, and learn one row of
    ``attention_biases`` per head, cached per device in eval mode. Heads are ranked by their ``qkv``
    rows and ``proj`` columns; the kept heads' rows (and their channels of ``qkv_norm``, LeViT's
    BatchNorm), columns and biases stay, the cache is emptied and ``num_heads`` set. The caller
    updates the attention's other derived widths (they differ between the models).
    """
    n, key_dim, val_dim = attn.num_heads, attn.key_dim, attn.val_dim
    per_head = 2 * key_dim + val_dim
    kept = importance.select([(qkv.weight.view(n, per_head, -1), 0), (proj.weight.view(-1, n, val_dim), 1)], heads)
    rows = group_channels(kept, per_head)
    slice_linear(qkv, out_idx=rows)
    if qkv_norm is not None:
        slice_norm(qkv_norm, rows)
    slice_linear(proj, in_idx=group_channels(kept, val_dim))
    slice_params(cast(nn.Module, attn), ("attention_biases",), kept)
    attn.attention_bias_cache = {}  # eval mode caches the biases of every head per device
    attn.num_heads = len(kept)
    return kept
