"""Measured inference latency of a model, always reported with the device it was measured on.

MACs say little about speed: depthwise convolutions, attention and memory-bound layers run far from
a device's peak, and two students with equal MACs can differ 2x in wall-clock time. So latency is
*timed*, never estimated -- and a timing is only meaningful with the device, runtime, thread count
and batch size that produced it, which is why :class:`LatencyReport` carries all of them and
:func:`device_name` spells the device out (the CPU model from ``/proc/cpuinfo``, or CUDA's device
name).

Two runtimes:

* ``"torch"``: eager PyTorch under ``torch.inference_mode`` in eval mode. On CPU each run is timed
  with ``time.perf_counter``; on CUDA with CUDA events around each run (the GPU runs
  asynchronously, so host timers would time the kernel launches, not the kernels).
* ``"onnxruntime"``: the model is exported to a temporary ONNX file (TorchScript exporter, as
  :func:`structsearch.search.export.export_onnx`) and an ``InferenceSession`` is timed; this is what
  a deployment without PyTorch sees, and its graph optimisations (fused BN, fused activations) often
  change the ranking of candidates.

The figure kept is the **median** of ``repeats`` timed runs after ``warmup`` untimed ones (the
median shrugs off the occasional descheduling on a shared machine); p90 and min come with it.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from structsearch.cost.counter import _eval_mode, _normalize_input_size
from structsearch.cost.onnx_graph import export_graph
from structsearch.devices import resolve_device
from structsearch.errors import CostError, one_line

__all__ = ["LatencyReport", "Runtime", "cpu_model_name", "device_name", "measure_latency"]

Runtime = Literal["torch", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LatencyReport:
    """The measured latency of one model at one input size, with everything that produced it.

    Attributes:
        median_ms: median wall-clock time of one inference call (one batch), in milliseconds.
        p90_ms: 90th percentile (nearest rank) of the timed runs.
        min_ms: fastest timed run.
        runtime: ``"torch"`` or ``"onnxruntime"``.
        runtime_version: e.g. ``"torch 2.14.1"``, ``"onnxruntime 1.32.0"``.
        device: the named device, e.g. ``"AMD EPYC 7B13 (cpu, 2 threads)"`` or
            ``"NVIDIA H100 80GB HBM3 (cuda:0)"``; what latency budgets are read against.
        device_type: ``"cpu"`` or ``"cuda"``.
        threads: intra-op CPU threads the run used (``None`` on CUDA).
        batch_size: images per inference call.
        input_size: ``(C, H, W)`` of one image.
        warmup: untimed runs before timing.
        repeats: timed runs.
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    runtime: str
    runtime_version: str
    device: str
    device_type: str
    threads: int | None
    batch_size: int
    input_size: tuple[int, int, int]
    warmup: int
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``input_size`` as a list)."""
        return {**asdict(self), "input_size": list(self.input_size)}


@functools.cache
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform`` elsewhere), e.g. ``AMD EPYC 7B13``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """The name latency and memory figures are stored with: ``"AMD EPYC 7B13 (cpu, 2 threads)"``.

    CPU figures name the CPU model and, for latency, the thread count (a 2-thread and a 16-thread
    run of the same CPU are different devices as far as latency goes); CUDA figures name the GPU.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if threads is None:
        return f"{cpu_model_name()} (cpu)"
    return f"{cpu_model_name()} (cpu, {threads} thread{'s' if threads != 1 else ''})"


def measure_latency(
    model: nn.Module,
    input_size: int | tuple[int, int, int],
    *,
    runtime: Runtime = "torch",
    device: str = "cpu",
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
) -> LatencyReport:
    """Time ``model`` on a ``(batch_size, *input_size)`` input and report the median in ms.

    The caller's model is left as it was: it is timed in eval mode with every module's training
    flag restored afterwards, and it is copied (not moved) when it lives on another device than
    the one measured. CPU runs use ``threads`` intra-op threads (default: torch's current setting),
    set for the duration of the measurement and restored afterwards.

    Args:
        model: any module; for ``"onnxruntime"`` it must export with the TorchScript exporter.
        input_size: ``(C, H, W)``, or an int ``S`` for ``(3, S, S)``.
        runtime: ``"torch"`` (eager) or ``"onnxruntime"`` (exported to a temporary ONNX file).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        batch_size: images per timed call.
        threads: CPU intra-op threads; ignored on CUDA.
        warmup: untimed calls first (allocator, caches, lazy initialisation).
        repeats: timed calls; the median of them is the figure.

    Raises:
        CostError: bad arguments, no CUDA, onnxruntime missing, or the model does not export to ONNX.
    """
    size = _normalize_input_size(input_size)
    if runtime not in RUNTIMES:
        raise CostError(f"unknown runtime {runtime!r} to measure latency with; use torch or onnxruntime")
    for name, value, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CostError(f"{name} must be an integer >= {low}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CostError(f"threads must be a positive integer, got {threads!r}")
    dev = resolve_device(device)
    n_threads = (threads or torch.get_num_threads()) if dev.type == "cpu" else None
    if runtime == "torch":
        times, version = (
            _time_torch(model, size, dev, batch_size, n_threads, warmup, repeats),
            f"torch {torch.__version__}",
        )
    else:
        times, version = _time_onnxruntime(model, size, dev, batch_size, n_threads, warmup, repeats)
    ordered = sorted(times)
    return LatencyReport(
        median_ms=float(statistics.median(ordered)),
        p90_ms=float(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]),
        min_ms=float(ordered[0]),
        runtime=runtime,
        runtime_version=version,
        device=device_name(dev, n_threads),
        device_type=dev.type,
        threads=n_threads,
        batch_size=batch_size,
        input_size=size,
        warmup=warmup,
        repeats=repeats,
    )


def _model_on(model: nn.Module, dev: torch.device) -> nn.Module:
    """The model itself when it already lives on ``dev``, else a copy there (never moves the caller's)."""
    tensors = [*model.parameters(), *model.buffers()]
    here = tensors[0].device if tensors else torch.device("cpu")
    if here.type == dev.type and (dev.type == "cpu" or here.index == dev.index):
        return model
    return copy.deepcopy(model).to(dev)


def _example_input(model: nn.Module, size: tuple[int, int, int], batch_size: int, dev: torch.device) -> torch.Tensor:
    """A seeded random batch in the model's floating dtype; a private generator leaves the global RNG alone."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *size), generator=gen).to(device=dev, dtype=dtype)


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for a block, restoring the previous one after."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _time_torch(
    model: nn.Module,
    size: tuple[int, int, int],
    dev: torch.device,
    batch_size: int,
    threads: int | None,
    warmup: int,
    repeats: int,
) -> list[float]:
    """Per-call milliseconds of eager PyTorch (host timer on CPU, CUDA events on CUDA)."""
    net = _model_on(model, dev)
    x = _example_input(net, size, batch_size, dev)
    times: list[float] = []
    with _eval_mode(net), torch.inference_mode(), _threads(threads):
        if dev.type != "cuda":
            return _host_times(lambda: net(x), warmup, repeats)
        for _ in range(warmup):
            net(x)
        torch.cuda.synchronize(dev)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            net(x)
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
    return times


def _host_times(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Per-call milliseconds of ``run`` by the host's clock, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _time_onnxruntime(
    model: nn.Module,
    size: tuple[int, int, int],
    dev: torch.device,
    batch_size: int,
    threads: int | None,
    warmup: int,
    repeats: int,
) -> tuple[list[float], str]:
    """Per-call milliseconds of an onnxruntime session on a temporary export of ``model``.

    ``session.run`` returns host arrays, so on CUDA each timing includes the input upload and the
    output download -- what a caller of the session pays.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise CostError("onnxruntime latency needs onnx and onnxruntime: pip install 'structsearch[onnx]'") from None
    provider = "CUDAExecutionProvider" if dev.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise CostError(f"this onnxruntime build has no {provider}; install onnxruntime-gpu or measure on cpu")
    cpu_net = _model_on(model, torch.device("cpu"))
    x = _example_input(cpu_net, size, batch_size, torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="structsearch-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with _eval_mode(cpu_net), torch.no_grad():
                export_graph(cpu_net, x, path, "output")
        except Exception as e:  # noqa: BLE001 -- any exporter failure means "cannot time it with onnxruntime"
            raise CostError(
                f"cannot export {type(model).__name__} to ONNX for onnxruntime latency: {one_line(e)}"
            ) from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        provider_options = [{"device_id": dev.index or 0}] if dev.type == "cuda" else [{}]
        session = ort.InferenceSession(str(path), options, providers=[provider], provider_options=provider_options)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return _host_times(
        lambda: session.run(None, feed), warmup, repeats
    ), f"onnxruntime {importlib.metadata.version('onnxruntime')}"
