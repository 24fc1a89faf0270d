"""In-place slicing of layers: the primitives every family adapter uses.

Layers are sliced *in place* (their parameters and buffers replaced by the kept slices, their size
attributes updated) rather than rebuilt, so subclasses with extra behaviour -- timm's
``BatchNormAct2d`` with its fused activation, ``Conv2dSame`` with its padding -- keep working.
After slicing the removed channels are physically gone: there are no masks.
"""

from __future__ import annotations

from typing import TypeGuard

import torch
from torch import Tensor, nn


def _param(t: Tensor, like: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


def slice_conv(conv: nn.Conv2d, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> None:
    """Keep output channels ``out_idx`` and input channels ``in_idx`` of ``conv``.

    Depthwise convolutions (``groups == in_channels == out_channels``) are sliced on both sides by
    the same indices; pass ``out_idx`` only.
    """
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise:
        idx = out_idx if out_idx is not None else in_idx
        if idx is None:
            return
        conv.weight = _param(conv.weight.data[idx], conv.weight)
        if conv.bias is not None:
            conv.bias = _param(conv.bias.data[idx], conv.bias)
        conv.in_channels = conv.out_channels = conv.groups = len(idx)
        return
    if conv.groups != 1:
        _slice_grouped(conv, out_idx, in_idx)
        return
    _slice_dense(conv, out_idx, in_idx, "out_channels", "in_channels")


def _slice_grouped(conv: nn.Conv2d, out_idx: Tensor | None, in_idx: Tensor | None) -> None:
    """Keep whole groups of a grouped convolution (ResNeXt, RegNet): ``out_idx`` must be the channels
    of whole output groups (:func:`group_channels`); group ``g``'s inputs go with it, so the layer
    before must keep ``group_channels(groups, conv.in_channels // conv.groups)``."""
    if in_idx is not None or out_idx is None:
        raise ValueError(f"a grouped convolution (groups={conv.groups}) is sliced by whole output groups only")
    per_out, per_in = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    groups = out_idx.reshape(-1, per_out)[:, 0] // per_out if out_idx.numel() % per_out == 0 else None
    if groups is None or not torch.equal(group_channels(groups, per_out), out_idx):
        raise ValueError(f"keep whole groups of {per_out} channels in a grouped convolution")
    conv.weight = _param(conv.weight.data[out_idx], conv.weight)
    if conv.bias is not None:
        conv.bias = _param(conv.bias.data[out_idx], conv.bias)
    conv.groups = len(groups)
    conv.out_channels, conv.in_channels = len(out_idx), len(groups) * per_in


def slice_linear(lin: nn.Linear, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> None:
    """Keep output features ``out_idx`` and input features ``in_idx`` of ``lin``."""
    _slice_dense(lin, out_idx, in_idx, "out_features", "in_features")


def _slice_dense(
    layer: nn.Conv2d | nn.Linear, out_idx: Tensor | None, in_idx: Tensor | None, out_size: str, in_size: str
) -> None:
    """Slice a weight laid out ``(out, in, ...)`` and its bias; ``out_size``/``in_size`` name the size attributes."""
    w = layer.weight
    data = w.data
    if out_idx is not None:
        data = data[out_idx]
        if layer.bias is not None:
            layer.bias = _param(layer.bias.data[out_idx], layer.bias)
        setattr(layer, out_size, len(out_idx))
    if in_idx is not None:
        data = data[:, in_idx]
        setattr(layer, in_size, len(in_idx))
    layer.weight = _param(data, w)


def is_batch_norm(m: nn.Module) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm of any kind (incl. timm's ``BatchNormAct2d``): per-channel, so slicing channels is exact."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def slice_norm(norm: nn.Module, idx: Tensor) -> None:
    """Keep channels ``idx`` of a BatchNorm (any subclass), a LayerNorm over channels, or a GroupNorm
    when ``idx`` is whole groups (each group's statistics are its own, so the kept ones are exact)."""
    if is_batch_norm(norm):
        for name in ("running_mean", "running_var"):
            buf = getattr(norm, name)
            if buf is not None:
                setattr(norm, name, buf[idx].clone())
        norm.num_features = len(idx)
    elif isinstance(norm, nn.LayerNorm):
        norm.normalized_shape = (len(idx),)
    elif isinstance(norm, nn.GroupNorm):
        size = norm.num_channels // norm.num_groups
        groups = idx.reshape(-1, size) if len(idx) % size == 0 else None
        if groups is None or not torch.equal(groups, group_channels(groups[:, 0] // size, size).reshape(-1, size)):
            raise ValueError(
                f"a GroupNorm of groups of {size} channels keeps whole groups, not channels {idx.tolist()}"
            )
        norm.num_groups, norm.num_channels = len(groups), len(idx)
    else:
        raise TypeError(f"cannot slice normalisation layer {type(norm).__name__}")
    slice_params(norm, ("weight", "bias"), idx)


def slice_params(module: nn.Module, names: tuple[str, ...], idx: Tensor) -> None:
    """Keep entries ``idx`` (along dimension 0) of the named parameters of ``module`` that are set."""
    for name in names:
        p = getattr(module, name)
        if p is not None:
            setattr(module, name, _param(p.data[idx], p))


def group_channels(groups: Tensor, group_size: int) -> Tensor:
    """Channel indices of the given groups (attention heads, conv groups) in a ``(groups * group_size)`` layout."""
    return (groups[:, None] * group_size + torch.arange(group_size, device=groups.device)[None, :]).reshape(-1)


def keep_blocks(blocks: nn.Sequential, keep: list[bool]) -> nn.Sequential:
    """A new ``Sequential`` with only the kept blocks (same objects, same order)."""
    return nn.Sequential(*[b for b, k in zip(blocks, keep) if k])
