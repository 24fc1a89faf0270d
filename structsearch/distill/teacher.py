"""The teacher side of distillation: its identity, the augmented training stream, its outputs.

Augmentation is random, yet teacher outputs are cached, so the augmented stream is made
deterministic: :func:`augmented_views` turns the training images into ``views`` augmented copies,
each drawn from a generator seeded by ``(aug_seed, view)``. The trainer then samples
``(view, image)`` pairs, and the teacher's output for every pair is computed once
(:func:`run_teacher`) and stored in the :class:`~structsearch.distill.cache.TeacherCache`.

The augmented images are *regenerated* from the seed rather than stored: regenerating 10,000
CIFAR images takes well under a second and keeps the cache small (logits are 40 bytes per view
and image, the images 3 KB). The checksum of the regenerated views is part of the cache key, so if
a different torch version ever drew other random numbers the key changes and the outputs are
recomputed, never silently mismatched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from structsearch.data import Augment, Preprocess
from structsearch.distill.taps import tapped

#: Images augmented per generator call. Fixed, because the random numbers drawn depend on it.
AUG_CHUNK = 1024


@dataclass(frozen=True)
class TeacherId:
    """What identifies a teacher's outputs: model name, constructor kwargs and checkpoint content."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    checkpoint_hash: str | None = None

    @classmethod
    def of(cls, name: str, kwargs: dict[str, Any] | None = None, checkpoint: Any = None) -> TeacherId:
        """The id of ``create_model(name, checkpoint, **kwargs)``; hashes the checkpoint file."""
        from structsearch.models import file_hash

        return cls(name, tuple(sorted((kwargs or {}).items())), file_hash(checkpoint) if checkpoint else None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs), "checkpoint": self.checkpoint_hash}


def tensor_digest(t: Tensor) -> str:
    """sha256 of a CPU tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}\n".encode())
    h.update(t.numpy().data.cast("B") if t.numel() else b"")
    return h.hexdigest()


def state_digest(model: nn.Module) -> str:
    """sha256 over a model's class and state dict: an id for teachers built in memory (no checkpoint)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(value).encode())
    return h.hexdigest()


def augmented_views(x: Tensor, augment: Augment | None, seed: int, views: int) -> Tensor:
    """``views`` augmented copies of the uint8 images ``x`` as one V×N×3×H×W uint8 tensor.

    View ``v`` is :func:`augmented_view` ``(x, augment, seed, v)``, so the result depends only on
    ``(x, augment, seed, views)``. Without augmentation every view is ``x`` itself.
    """
    out = torch.empty((views, *x.shape), dtype=torch.uint8)
    for v in range(views):
        out[v] = augmented_view(x, augment, seed, v)
    return out


def augmented_view(x: Tensor, augment: Augment | None, seed: int, view: int) -> Tensor:
    """Augmented copy number ``view`` of ``x``: drawn from ``torch.Generator().manual_seed(seed *
    1_000_003 + view)`` in chunks of :data:`AUG_CHUNK` images (``x`` itself without augmentation)."""
    if augment is None:
        return x
    out = torch.empty_like(x)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + view)
    for start in range(0, x.shape[0], AUG_CHUNK):
        out[start : start + AUG_CHUNK] = augment(x[start : start + AUG_CHUNK], g)
    return out


class OnlineTeacher:
    """Runs the teacher on every batch (no cache): the baseline the cache is measured against."""

    def __init__(self, teacher: nn.Module, taps: tuple[str, ...] = ()) -> None:
        self.teacher = teacher
        self.taps = taps

    def __call__(self, pairs: Tensor, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        # no_grad, not inference_mode: inference tensors may not be saved for the student's backward
        with torch.no_grad():
            if not self.taps:
                return self.teacher(x), []
            with tapped(self.teacher, self.taps) as tap:
                logits = self.teacher(x)
                return logits, tap.take()


class CachedTeacher:
    """Looks the teacher's outputs for ``(view, image)`` pairs up in precomputed arrays."""

    def __init__(self, logits: np.ndarray, features: Sequence[np.ndarray], device: torch.device) -> None:
        # logits are small: keep them as one tensor on the device; features stay memory-mapped.
        self.logits = torch.from_numpy(np.array(logits, dtype=np.float32)).to(device)
        self.features = list(features)
        self.device = device

    def __call__(self, pairs: Tensor, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        logits = self.logits[pairs.to(self.device)]
        if not self.features:
            return logits, []
        rows = pairs.cpu().numpy()
        feats = [torch.from_numpy(np.asarray(f[rows])).to(self.device, torch.float32) for f in self.features]
        return logits, feats


def run_teacher(
    teacher: nn.Module,
    x_uint8: Tensor,
    preprocess: Preprocess,
    batch_size: int,
    device: torch.device,
    taps: tuple[str, ...] = (),
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """The teacher's outputs on every image of ``x_uint8``: ``logits`` (float32) and ``feat{k}`` (float16).

    Runs in eval mode under ``torch.inference_mode``; images are preprocessed batch by batch, so
    memory holds one float batch at a time.
    """
    n = x_uint8.shape[0]
    logits: np.ndarray | None = None
    feats: list[np.ndarray] = []
    teacher.eval()
    with torch.inference_mode(), tapped(teacher, taps) as tap:
        for start in range(0, n, batch_size):
            xb = preprocess(x_uint8[start : start + batch_size].to(device))
            xb = xb.contiguous(memory_format=torch.channels_last) if channels_last and xb.ndim == 4 else xb
            out = teacher(xb)
            if logits is None:
                logits = np.empty((n, *out.shape[1:]), dtype=np.float32)
            logits[start : start + len(xb)] = out.float().cpu().numpy()
            for k, f in enumerate(tap.take() if taps else []):
                if len(feats) <= k:
                    feats.append(np.empty((n, *f.shape[1:]), dtype=np.float16))
                feats[k][start : start + len(xb)] = f.float().cpu().numpy().astype(np.float16)
    if logits is None:
        raise ValueError("run_teacher needs at least one image")
    return {"logits": logits, **{f"feat{k}": f for k, f in enumerate(feats)}}
