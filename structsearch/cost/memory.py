"""Measured peak activation memory of one inference forward pass.

What an edge deployment runs out of is usually not weights but the activations alive at the worst
moment of a forward pass (the widest feature map plus whatever a residual branch keeps alive), and
that depends on the graph's shape, not on MACs. It is *measured* here, per device:

* **CPU** (``method="torch-dispatch live storages"``): the forward runs under a
  :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees the output of every ATen op,
  records each *new* tensor storage with its size, and learns when the storage is freed through a
  ``weakref.finalize`` on it (PyTorch keeps one Python object per storage for its whole life, so the
  finalizer fires exactly when the memory is released). The peak of the running sum is the figure.
  Storages that existed before the forward -- parameters, buffers and the input -- are excluded;
  views and in-place results share their base's storage and are counted once. Scratch buffers a
  kernel allocates and frees inside one op (im2col, oneDNN workspaces) are not op outputs and are not
  counted: the figure is the tensors the model's graph keeps alive, which is what varies between
  candidates.
* **CUDA** (``method="torch.cuda.max_memory_allocated"``): the caching allocator's peak during the
  forward minus what was allocated before it (weights and input). This one *does* include kernel
  workspaces (cuDNN) and the allocator's 512-byte rounding, so CUDA and CPU figures of the same model
  differ somewhat -- which is why every report names its method and device.

Both run under ``torch.inference_mode`` in eval mode: no tensors are saved for backward, as in
deployment.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from structsearch.cost.counter import _eval_mode, _normalize_input_size
from structsearch.cost.latency import _model_on, device_name
from structsearch.devices import resolve_device
from structsearch.errors import CostError

__all__ = ["CPU_METHOD", "CUDA_METHOD", "MemoryReport", "measure_memory"]

CPU_METHOD = "torch-dispatch live storages"
CUDA_METHOD = "torch.cuda.max_memory_allocated"


@dataclass(frozen=True)
class MemoryReport:
    """Peak activation memory of one inference forward.

    Attributes:
        peak_bytes: bytes of activations alive at the worst moment (weights and input excluded).
        method: :data:`CPU_METHOD` or :data:`CUDA_METHOD` (they count slightly different things).
        device: the named device, e.g. ``"AMD EPYC 7B13 (cpu)"``.
        device_type: ``"cpu"`` or ``"cuda"``.
        batch_size: images in the measured forward (activations scale with it).
        input_size: ``(C, H, W)`` of one image.
    """

    peak_bytes: int
    method: str
    device: str
    device_type: str
    batch_size: int
    input_size: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``input_size`` as a list)."""
        return {**asdict(self), "input_size": list(self.input_size)}


class LiveStorageTracker(TorchDispatchMode):
    """Running sum and peak of the bytes of tensor storages created under this mode and still alive.

    ``exclude`` holds the ``data_ptr`` of storages that existed before (weights, input): an op that
    returns a view of one of them (``weight.t()`` in a linear layer, ``x.flatten()``) allocates
    nothing. Each new storage is counted once, at its size when first seen.
    """

    def __init__(self, exclude: set[int] | None = None) -> None:
        super().__init__()
        self.exclude = exclude or set()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse/nested layouts have no single storage
            return
        key = id(storage)
        if key in self._live or storage.data_ptr() in self.exclude:
            return
        nbytes = int(storage.nbytes())
        self._live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        self._finalizers.append(weakref.finalize(storage, self._freed, key))

    def _freed(self, key: int) -> None:
        nbytes = self._live.pop(key, None)
        if nbytes is not None:
            self.current -= nbytes

    def detach(self) -> None:
        """Drop the finalizers still pending (the storages outlive the measurement)."""
        for fin in self._finalizers:
            fin.detach()
        self._finalizers.clear()


def measure_memory(
    model: nn.Module,
    input_size: int | tuple[int, int, int],
    *,
    device: str = "cpu",
    batch_size: int = 1,
) -> MemoryReport:
    """Peak activation bytes of one inference forward of ``model`` on a ``(batch_size, *input_size)`` input.

    The caller's model is left as it was (training flags restored; copied, not moved, when it lives
    on another device than the one measured).

    Raises:
        CostError: a bad input size or batch size, or CUDA asked for where there is none.
    """
    size = _normalize_input_size(input_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CostError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = resolve_device(device)
    net = _model_on(model, dev)
    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros((batch_size, *size), dtype=dtype, device=dev)
    with _eval_mode(net), torch.inference_mode():
        peak = _cuda_peak(net, x, dev) if dev.type == "cuda" else _cpu_peak(net, x)
    return MemoryReport(
        peak_bytes=int(peak),
        method=CUDA_METHOD if dev.type == "cuda" else CPU_METHOD,
        device=device_name(dev),
        device_type=dev.type,
        batch_size=batch_size,
        input_size=size,
    )


def _cpu_peak(net: nn.Module, x: torch.Tensor) -> int:
    """Run one forward under :class:`LiveStorageTracker`; weights, buffers and input excluded."""
    existing = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers(), x)}
    tracker = LiveStorageTracker(existing)
    try:
        with tracker:
            out = net(x)
        del out  # the output counts toward the peak (it is alive when the forward ends)
    finally:
        tracker.detach()
    return tracker.peak


def _cuda_peak(net: nn.Module, x: torch.Tensor, dev: torch.device) -> int:
    """The allocator's peak during one forward, above what was allocated before it."""
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    out = net(x)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    del out
    return max(0, peak)
