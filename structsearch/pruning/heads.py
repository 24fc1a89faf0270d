"""Keeping whole attention heads of a fused-``qkv`` attention: timm's ViT ``Attention`` and Swin's
``WindowAttention`` both project tokens with one ``qkv`` linear layer whose output rows are laid out
``(q|k|v, head, head_dim)`` and mix the heads back with ``proj``, whose input columns are laid out
``(head, head_dim)``.

A kept head keeps its ``head_dim`` (so the softmax scale, ``head_dim ** -0.5``, is unchanged) and
computes exactly what it did in the teacher; the caller slices what else its attention holds per
head (ViT's output gate and scale norm, Swin's relative position bias table) and updates the
module's head count.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from structsearch.pruning.importance import TensorDim
from structsearch.pruning.ops import group_channels, slice_linear


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
