"""MACs and parameter counts of a model, in fvcore's convention.

fvcore traces the model with ``torch.jit`` and counts each traced op with a per-op handler. Two of
its behaviours would silently under-count our students, so this module corrects them:

* fvcore has no handler for ``aten::scaled_dot_product_attention``, which timm's ViTs use by
  default (``TIMM_FUSED_ATTN``); it only warns and drops the attention MACs (DeiT-Tiny counts
  1.08 G instead of 1.26 G). We register :func:`sdpa_flop_jit`. We do *not* flip timm's global
  fused-attention switch: it is read when modules are built and is shared with every other model in
  the worker process.
* Any other op without a handler is dropped with a warning that nobody reads. After counting we
  look at what went uncounted and raise :class:`~structsearch.errors.CostError` if a matmul-like op
  is among them; elementwise ops (add, mul, GELU, softmax, ...) stay uncounted, as fvcore intends.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from structsearch.errors import CostError

if TYPE_CHECKING:
    from fvcore.nn import FlopCountAnalysis

__all__ = [
    "CONVENTION",
    "CostReport",
    "count_params",
    "counter_version",
    "default_input_size",
    "is_matmul_like",
    "macs_by_operator",
    "measure_cost",
    "sdpa_flop_jit",
]

#: Stored with every number so a count can never be mistaken for PyTorch's 2-per-MAC FLOPs.
CONVENTION = "fvcore: 1 multiply-add = 1 flop (MACs)"

#: Op-name tokens (split on "_") that mark an op as doing multiply-accumulate work.
_MATMUL_TOKENS = frozenset(
    {
        "mm",
        "bmm",
        "addmm",
        "baddbmm",
        "addbmm",
        "mv",
        "addmv",
        "matmul",
        "einsum",
        "tensordot",
        "dot",
        "vdot",
        "vecdot",
        "inner",
        "outer",
        "ger",
        "addr",
        "kron",
        "linear",
        "bilinear",
        "trilinear",
        "attention",
        "rnn",
        "lstm",
        "gru",
    }
)
#: conv, conv2d, convolution (but not e.g. "convert").
_CONV_TOKEN = re.compile(r"^conv(\d+d|olution)?$")


@dataclass(frozen=True)
class CostReport:
    """The cost of one model at one input size, with the convention and counter that produced it.

    Attributes:
        macs: multiply-accumulates for one image (batch 1); fvcore calls these "flops".
        params: number of parameter elements (tied parameters counted once).
        input_size: ``(C, H, W)`` the model was counted at; MACs scale with H*W.
        convention: :data:`CONVENTION`.
        counter: ``"fvcore <version>"``; handlers differ between versions.
    """

    macs: int
    params: int
    input_size: tuple[int, int, int]
    convention: str
    counter: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; exact integers for machines plus ``gmacs``/``mparams`` for humans."""
        return {
            "macs": self.macs,
            "params": self.params,
            "input_size": list(self.input_size),
            "convention": self.convention,
            "counter": self.counter,
            "gmacs": round(self.macs / 1e9, 4),
            "mparams": round(self.params / 1e6, 4),
        }


def measure_cost(model: nn.Module, input_size: int | tuple[int, int, int]) -> CostReport:
    """Count the MACs of one forward pass (batch 1) and the parameters of ``model``.

    The model is traced on a zero tensor of shape ``(1, *input_size)`` on its own device and dtype,
    in eval mode (dropout and drop-path off, BatchNorm using running stats, as at inference) and
    under ``torch.no_grad``; every module's training flag is restored afterwards.

    Args:
        model: any module fvcore can trace (timm models can).
        input_size: ``(C, H, W)``, or an int ``S`` for ``(3, S, S)``.

    Raises:
        CostError: ``input_size`` is malformed, the model cannot run on it (too small for its
            downsampling, or not the size a ViT was built for), or a matmul-like op had no MAC handler.
    """
    size = _normalize_input_size(input_size)
    analysis = _run_analysis(model, size)
    _check_matmuls_counted(analysis, model)
    return CostReport(
        macs=int(round(analysis.total())),
        params=count_params(model),
        input_size=size,
        convention=CONVENTION,
        counter=counter_version(),
    )


def macs_by_operator(model: nn.Module, input_size: int | tuple[int, int, int]) -> dict[str, int]:
    """MACs per operator kind (``conv``, ``linear``, ``scaled_dot_product_attention``, ...).

    For finding where a student's MACs go, and for comparing the matmul-like part of the count
    with other counters that skip normalisation layers.
    """
    analysis = _run_analysis(model, _normalize_input_size(input_size))
    _check_matmuls_counted(analysis, model)
    return {op: int(round(n)) for op, n in analysis.by_operator().items()}


def count_params(model: nn.Module) -> int:
    """Parameter elements; ``parameters()`` yields tied weights once, so sharing is not double-counted."""
    return sum(p.numel() for p in model.parameters())


@functools.cache
def counter_version() -> str:
    """``"fvcore <version>"`` of the installed fvcore, recorded with every report."""
    return f"fvcore {importlib.metadata.version('fvcore')}"


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The ``(C, H, W)`` a timm model is meant to run at.

    Taken from ``pretrained_cfg["input_size"]`` (``default_cfg`` on older timm). A ViT built with a
    different ``img_size`` (e.g. 32 for CIFAR) keeps the 224 px cfg of its architecture but only
    accepts its own size, so its ``patch_embed.img_size`` wins.

    Raises:
        CostError: the model carries no timm config; pass an input size explicitly.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    cfg_size = cfg.get("input_size")
    patch_size = _patch_embed_img_size(model)
    if patch_size is not None:
        channels = int(cfg_size[0]) if cfg_size is not None else _patch_embed_channels(model)
        return (channels, patch_size[0], patch_size[1])
    if cfg_size is None:
        raise CostError(
            f"cannot tell the input size of {_model_name(model)}: it has no timm pretrained_cfg; "
            "pass an input size such as 224 or (3, 32, 32)"
        )
    return _normalize_input_size(tuple(int(d) for d in cfg_size))


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handler for ``aten::scaled_dot_product_attention``.

    With query ``(..., L, E)``, key ``(..., S, E)`` and value ``(..., S, Ev)`` (leading dims are
    batch and heads): ``Q @ K^T`` costs ``L*S*E`` MACs and ``softmax(.) @ V`` costs ``L*S*Ev`` per
    batch-head -- exactly what fvcore's ``matmul`` handler counts for the unfused
    ``q @ k.transpose(-2, -1)`` and ``attn @ v``. Scaling, masking and softmax are elementwise and
    uncounted, as elsewhere in fvcore; a causal mask is not discounted (nor is it by PyTorch's
    ``FlopCounterMode``). Grouped-query attention broadcasts key/value heads to the query's, so
    the query's leading dims are the ones that count.
    """
    query, key, value = (_jit_shape(v) for v in inputs[:3])
    if query is None or key is None or value is None or min(len(query), len(key), len(value)) < 2:
        raise CostError(
            "cannot count scaled_dot_product_attention: the trace has no complete "
            f"query/key/value shapes (got {query}, {key}, {value})"
        )
    batch_heads = math.prod(query[:-2])
    length, embed = query[-2], query[-1]
    source, value_embed = key[-2], value[-1]
    return batch_heads * length * source * (embed + value_embed)


def is_matmul_like(op: str) -> bool:
    """Whether a traced op name (``aten::baddbmm``, ``prim::PythonOp.MyConv``) does MAC work.

    Matching is on ``_``-separated tokens, not substrings, so ``upsample_bilinear2d`` is not
    ``bilinear`` and ``convert`` is not ``conv``.
    """
    name = op.rsplit("::", 1)[-1].lower()
    tokens = [t for t in re.split(r"[_.]", name) if t]
    return any(t in _MATMUL_TOKENS or _CONV_TOKEN.match(t) for t in tokens)


def _run_analysis(model: nn.Module, size: tuple[int, int, int]) -> FlopCountAnalysis:
    """Trace and count once; the analysis caches its statistics for the callers' queries."""
    flop_count_analysis = _fvcore_analysis_class()
    inputs = _zero_input(model, size)
    with _eval_mode(model), torch.no_grad():
        analysis = (
            flop_count_analysis(model, inputs)
            .set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
            # "none" also hides torch's jit deprecation warnings raised while fvcore traces: they
            # concern fvcore's implementation, not the user's model.
            .tracer_warnings("none")
        )
        try:
            analysis.total()  # trace now, while in eval mode and without autograd
        except (RuntimeError, AssertionError) as e:  # the first forward of a model: shape errors show here
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            kwarg = f"img_size={size[1]} (`--kw img_size={size[1]}`, or `kwargs: {{img_size: {size[1]}}}` in a spec)"
            built = _patch_embed_img_size(model)
            if built is not None and built != size[1:] and size[1] == size[2]:  # a ViT or Swin built for another size
                hint = f"it is built for {built[0]}x{built[1]} images: build it for these with the model kwarg {kwarg}"
            elif _buildable_for(model, size):  # LeViT, EfficientFormerV2: biases sized for one input
                hint = f"it is built for one input size: build it for this one with the model kwarg {kwarg}"
            else:
                hint = "use larger images (data.input_size resizes them) or a model made for this size"
            raise CostError(
                f"{type(model).__name__} cannot run on {size[0]}x{size[1]}x{size[2]} inputs ({reason}); {hint}"
            ) from e
    return analysis


def _check_matmuls_counted(analysis: FlopCountAnalysis, model: nn.Module) -> None:
    """Fail loudly rather than report a budget-relevant count that is silently too small."""
    missing = {op: n for op, n in analysis.unsupported_ops().items() if is_matmul_like(op)}
    if missing:
        listed = ", ".join(f"{op} (x{n})" for op, n in sorted(missing.items()))
        raise CostError(
            f"cannot count the MACs of {_model_name(model)}: fvcore has no handler for the "
            f"matmul-like op(s) {listed}; the count would be too low, so add a handler in "
            "structsearch.cost.counter or avoid the op"
        )


@functools.cache
def _fvcore_analysis_class() -> type[FlopCountAnalysis]:
    """Import fvcore lazily: it is slow to import and, on import, calls ``torch.jit.script``,
    which recent torch flags with a FutureWarning that would otherwise reach every CLI user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode and restore each module's own flag afterwards.

    Restoring per module (not ``model.train(was_training)``) keeps deliberately frozen parts, such
    as BatchNorm layers held in eval during fine-tuning, as the caller had them.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _zero_input(model: nn.Module, size: tuple[int, int, int]) -> torch.Tensor:
    """A batch-1 zero image on the model's device, in its floating dtype (fvcore traces, so values
    do not matter; zeros keep the global RNG untouched)."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return torch.zeros((1, *size), device=device, dtype=dtype)


def _normalize_input_size(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``S`` -> ``(3, S, S)``; ``(C, H, W)`` checked to be three positive ints."""
    dims = (3, input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(dims) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise CostError(
            f"invalid input size {input_size!r}: use a positive int S for (3, S, S) or a (C, H, W) "
            "tuple of positive ints, e.g. 224 or (3, 32, 32)"
        )
    return (dims[0], dims[1], dims[2])


def _buildable_for(model: nn.Module, size: tuple[int, int, int]) -> bool:
    """Whether timm builds ``model``'s architecture, a fixed-input-size one, for square ``size`` inputs
    when asked with ``img_size`` (tried, on the error path only: EfficientFormer V1 accepts the
    kwarg and ignores it)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("fixed_input_size") or not cfg.get("architecture") or size[1] != size[2]:
        return False
    from structsearch.models import create_model

    try:
        probe = create_model(cfg["architecture"], img_size=size[1]).eval()
        with torch.no_grad():
            probe(torch.zeros(1, *size))
    except Exception:  # noqa: BLE001 (any failure means "no": the caller gives the general hint)
        return False
    return True


def _patch_embed_img_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a ViT's patch embedding was built for, if it has a fixed one."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    return (int(img_size[0]), int(img_size[1]))


def _patch_embed_channels(model: nn.Module) -> int:
    """Input channels of a ViT without a cfg, from the first convolution of its patch embedding
    (a patchify layer or a conv stem; 3 if there is none)."""
    patch_embed = getattr(model, "patch_embed", None)
    convs = (m for m in patch_embed.modules() if isinstance(m, nn.Conv2d)) if isinstance(patch_embed, nn.Module) else ()
    first = next(iter(convs), None)
    return first.in_channels if first is not None else 3


def _jit_shape(value: Any) -> list[int] | None:
    """Shape of a traced ``torch._C.Value``, or None when the trace did not record one."""
    if value.isCompleteTensor():
        return list(value.type().sizes())
    return None


def _model_name(model: nn.Module) -> str:
    """timm architecture name when known (more useful in messages than the class name)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)
