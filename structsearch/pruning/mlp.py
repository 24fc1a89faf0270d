"""Narrowing two-layer MLPs: :func:`shrink_hidden` for any two pointwise layers (every family's MLP),
:func:`shrink_mlp` for timm's own ``Mlp`` modules (the hidden width of ViT, Swin and ConvNeXt blocks).

Both families build their MLP from the same two timm modules (``timm/layers/mlp.py``):

* ``Mlp``: ``fc1 -> act -> norm -> fc2``, the layers ``nn.Linear`` on tokens / channels-last
  pixels, or 1x1 ``nn.Conv2d`` on NCHW maps (``use_conv=True``, ConvNeXt's ``conv_mlp``);
* ``GlobalResponseNormMlp`` (ConvNeXt-V2): ``fc1 -> act -> grn -> fc2``, where the GRN layer keeps
  one weight and bias per hidden channel.

Narrowing keeps ``fc1``'s most important output rows, the same channels of the hidden norm / GRN and
``fc2``'s input columns. The hidden LayerNorm and GRN both divide by a statistic over the hidden
channels (their variance; the mean response norm), so after slicing they normalise over the kept
channels only: the identity is exact, a narrowed MLP approximates the teacher's, and the
distillation proxy recovers the rest. Gated MLPs (``GluMlp``, ``SwiGLU``: each hidden unit is a value
times a gate) are not sliceable this way and are refused by :func:`sliceable_mlp`; :func:`shrink_gated`
narrows them, keeping each unit's value and gate rows together.
"""

from __future__ import annotations

from typing import cast

import torch
from timm.layers import GlobalResponseNormMlp, GluMlp, Mlp, SwiGLU
from timm.layers.grn import GlobalResponseNorm
from torch import nn

from structsearch.pruning.importance import Importance
from structsearch.pruning.ops import slice_conv, slice_linear, slice_norm, slice_params

#: The MLP modules handled here (exact types: a subclass may compute something else).
MLP_TYPES: tuple[type[nn.Module], ...] = (Mlp, GlobalResponseNormMlp)


def is_pointwise(layer: nn.Module) -> bool:
    """A ``Linear``, or a dense 1x1 convolution (the same map on NCHW tensors): a layer whose output
    channels and input channels can each be sliced on their own."""
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.kernel_size == (1, 1)


def hidden_norm(mlp: nn.Module) -> nn.Module:
    """The per-hidden-channel layer between ``fc1`` and ``fc2``: ``Mlp.norm`` or ``GlobalResponseNormMlp.grn``."""
    return mlp.get_submodule("grn" if isinstance(mlp, GlobalResponseNormMlp) else "norm")


def _fc(mlp: nn.Module, name: str) -> nn.Linear | nn.Conv2d:
    layer = mlp.get_submodule(name)
    assert isinstance(layer, (nn.Linear, nn.Conv2d)), "an MLP sliceable_mlp accepted"
    return layer


def hidden_width(mlp: nn.Module) -> int:
    """The MLP's hidden size: ``fc1``'s outputs."""
    return int(_fc(mlp, "fc1").weight.shape[0])


def sliceable_mlp(mlp: nn.Module) -> bool:
    """Whether :func:`shrink_mlp` can narrow ``mlp``: a plain ``Mlp`` / ``GlobalResponseNormMlp`` whose
    ``fc1`` and ``fc2`` are both linear or both 1x1 convolutions, with no hidden norm, a LayerNorm or a GRN."""
    if type(mlp) not in MLP_TYPES:
        return False
    fc1, fc2 = mlp.get_submodule("fc1"), mlp.get_submodule("fc2")
    if not (is_pointwise(fc1) and is_pointwise(fc2) and type(fc1) is type(fc2)):
        return False
    return isinstance(hidden_norm(mlp), (nn.Identity, nn.LayerNorm, GlobalResponseNorm))


def shrink_hidden(
    fc1: nn.Linear | nn.Conv2d,
    fc2: nn.Linear | nn.Conv2d,
    channels: int,
    importance: Importance,
    norms: tuple[nn.Module, ...] = (),
) -> list[int]:
    """Keep ``channels`` hidden units between two pointwise layers: ``fc1``'s outputs, the same
    channels of each per-channel layer in ``norms`` (a BatchNorm, LayerNorm or GRN), ``fc2``'s inputs.
    Units are ranked by ``fc1``'s rows and ``fc2``'s columns together; returns the kept indices in
    ascending order. Every family's two-layer MLP narrows through this."""
    idx = importance.select([(fc1.weight, 0), (fc2.weight, 1)], channels)
    if isinstance(fc1, nn.Conv2d):
        slice_conv(fc1, out_idx=idx)
    else:
        slice_linear(fc1, out_idx=idx)
    if isinstance(fc2, nn.Conv2d):
        slice_conv(fc2, in_idx=idx)
    else:
        slice_linear(fc2, in_idx=idx)
    for norm in norms:
        if isinstance(norm, GlobalResponseNorm):
            slice_params(norm, ("weight", "bias"), idx)
        elif not isinstance(norm, nn.Identity):
            slice_norm(norm, idx)
    return idx.tolist()


def shrink_mlp(mlp: nn.Module, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` hidden units of ``mlp`` (one :func:`sliceable_mlp` accepts), ranked by
    ``fc1``'s rows and ``fc2``'s columns together; returns the kept indices in ascending order."""
    return shrink_hidden(_fc(mlp, "fc1"), _fc(mlp, "fc2"), channels, importance, (hidden_norm(mlp),))


def sliceable_gated(mlp: nn.Module) -> bool:
    """Whether :func:`shrink_gated` can narrow ``mlp``: timm's ``SwiGLU`` (separate value and gate
    layers ``fc1_x``/``fc1_g``) or ``GluMlp`` (one ``fc1`` whose halves are value and gate) on tokens,
    with linear layers and no hidden norm or a LayerNorm."""
    if type(mlp) is SwiGLU:
        layers: tuple[nn.Module, ...] = (mlp.fc1_g, mlp.fc1_x, mlp.fc2)
    elif type(mlp) is GluMlp:
        layers = (mlp.fc1, mlp.fc2)
    else:
        return False
    return all(type(layer) is nn.Linear for layer in layers) and isinstance(mlp.norm, (nn.Identity, nn.LayerNorm))


def gated_width(mlp: nn.Module) -> int:
    """A gated MLP's hidden size: its units, each a value times a gate (``fc2``'s inputs)."""
    return int(_fc(mlp, "fc2").weight.shape[1])


def shrink_gated(mlp: nn.Module, channels: int, importance: Importance) -> list[int]:
    """Keep ``channels`` hidden units of a gated MLP (one :func:`sliceable_gated` accepts): each unit's
    value row, gate row, hidden-norm channel and ``fc2`` column, ranked by all of them together, so
    a kept unit computes exactly what it did in the teacher. Returns the kept units in ascending order."""
    fc2 = _fc(mlp, "fc2")
    width = gated_width(mlp)
    if type(mlp) is SwiGLU:
        rows: list[nn.Linear] = [mlp.fc1_g, mlp.fc1_x]
        idx = importance.select([(r.weight, 0) for r in rows] + [(fc2.weight, 1)], channels)
        for r in rows:
            slice_linear(r, out_idx=idx)
    else:  # GluMlp: fc1's rows are [first half | second half], unit i is rows i and width + i
        fc1 = cast(nn.Linear, mlp.fc1)
        halves = fc1.weight.view(2, width, -1)
        idx = importance.select([(halves, 1), (fc2.weight, 1)], channels)
        slice_linear(fc1, out_idx=torch.cat([idx, idx + width]))
    norm = mlp.get_submodule("norm")
    if not isinstance(norm, nn.Identity):
        slice_norm(norm, idx)
    slice_linear(cast(nn.Linear, fc2), in_idx=idx)
    return idx.tolist()
