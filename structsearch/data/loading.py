"""`load_data`: decode a `DataSpec` once per process into validated in-memory tensors.

A search runs many short trials on the same images; decoding 50,000 PNGs or re-reading an archive
per trial would cost more than the trials. So the decoded source is cached per process, keyed on
the spec and on the identity of its files (path, mtime, size): a file rewritten between two calls
is read again, an unchanged one never is. Row slices are views of the cached source, so
``test.npz[:5000]`` and ``test.npz[5000:]`` share one decode and one copy in memory.

Tensors in a :class:`LoadedData` are shared by every caller: treat them as read-only.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Hashable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from structsearch.data import sources
from structsearch.data.spec import DataSpec
from structsearch.errors import DataError

#: More classes than this means the labels are not class indices (ImageNet-22k has 21,841).
MAX_CLASSES = 100_000


@dataclass(frozen=True, eq=False)
class LoadedData:
    """Images and labels of one spec, validated, in memory.

    ``eq=False``: two loads are "the same data" when they are the same object (the cache makes
    that so) or have the same :func:`fingerprint`; comparing tensors element-wise is not equality.
    """

    #: uint8 N×3×H×W, channels-first, contiguous, RGB (grayscale sources repeated over 3 channels).
    x: torch.Tensor
    #: int64 N, class indices in ``[0, num_classes)``.
    y: torch.Tensor
    #: Class count of the whole source, not of this slice (a slice may miss some classes).
    num_classes: int
    class_names: tuple[str, ...]
    #: The canonical spec string the data came from, for messages and records.
    source: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return (int(self.x.shape[2]), int(self.x.shape[3]))

    @cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"structsearch-data-v1 x{tuple(self.x.shape)} y{tuple(self.y.shape)}\n".encode())
        h.update(self.x.contiguous().numpy().data.cast("B"))
        h.update(self.y.contiguous().numpy().data.cast("B"))
        return h.hexdigest()


def fingerprint(data: LoadedData) -> str:
    """sha256 hex digest of the images and labels (and their shapes), computed once per object.

    Used as a cache key for teacher outputs: it changes when any pixel, label or the row selection
    changes, and not when the same bytes are reached through another path or spec spelling.
    """
    return data._fingerprint


def load_data(spec: DataSpec | str) -> LoadedData:
    """Load, validate and cache the data ``spec`` names; raise DataError on any problem with it.

    Thread-safe: concurrent calls for the same spec decode once. The cost after the first call is a
    ``stat`` of the file (a listing for image folders), so calling this per trial is fine.
    """
    return _CACHE.load(DataSpec.parse(spec))


def clear_cache() -> None:
    """Forget every decoded source (frees the memory; the next load decodes again)."""
    _CACHE.clear()


def check_labels(data: LoadedData, num_classes: int) -> None:
    """Raise DataError unless every label of ``data`` is a valid class index of a ``num_classes`` model.

    Called by the trainer before any training, with the teacher's class count: a label the teacher
    cannot predict would make accuracy meaningless and cross-entropy crash mid-run.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DataError(f"the model's class count must be a positive integer, got {num_classes!r}")
    if len(data) == 0:
        return
    low, high = int(data.y.min()), int(data.y.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"labels of {data.source} range over {low}..{high} but the model has {num_classes} classes "
            f"(0..{num_classes - 1}); use data labelled for this model"
        )


# -- the per-process cache -------------------------------------------------------------------------


class _DataCache:
    """Decoded sources and their slices, keyed on canonical spec, valid while the identity holds.

    One lock serialises loading: with two CPU cores there is nothing to gain from decoding two
    sources at once, and it guarantees that concurrent trials never decode the same source twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[DataSpec, tuple[Hashable, LoadedData]] = {}

    def load(self, spec: DataSpec) -> LoadedData:
        with self._lock:
            prepared = sources.prepare(spec)
            key = prepared.canonical
            identity = prepared.identity
            full = self._get(key, identity)
            if full is None:
                full = _finalize(prepared.decode(), str(key))
                if prepared.identity_after_decode is not None:
                    identity = prepared.identity_after_decode()
                self._evict_source(key)
                self._entries[key] = (identity, full)
            if not spec.is_sliced:
                return full
            sliced_key = replace(key, start=spec.start, stop=spec.stop)
            view = self._get(sliced_key, identity)
            if view is None:
                view = _slice(full, sliced_key)
                self._entries[sliced_key] = (identity, view)
            return view

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _get(self, key: DataSpec, identity: Hashable) -> LoadedData | None:
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] == identity else None

    def _evict_source(self, key: DataSpec) -> None:
        """Drop a stale source and every slice of it, so an old version is not kept alive."""
        for stale in [k for k in self._entries if k.unsliced() == key]:
            del self._entries[stale]


_CACHE = _DataCache()


# -- validation and conversion ---------------------------------------------------------------------


def _finalize(raw: sources.RawArrays, source: str) -> LoadedData:
    """Validate decoded arrays and turn them into channels-first uint8 / int64 tensors."""
    _check_images(raw, source)
    _check_targets(raw.y, len(raw.x), source)
    num_classes, names = _classes(raw.y, raw.class_names, source)
    x = _to_nchw(raw.x, raw.channels_first)
    y = torch.from_numpy(np.asarray(raw.y).astype(np.int64))
    return LoadedData(x=x, y=y, num_classes=num_classes, class_names=names, source=source)


def _check_images(raw: sources.RawArrays, source: str) -> None:
    x = raw.x
    if not isinstance(x, np.ndarray):
        raise DataError(f"{source}: x must be an array of images, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise DataError(f"{source}: x must be uint8 images (0..255), got dtype {x.dtype}")
    channel_axis = 1 if raw.channels_first else -1
    colour = x.ndim == 4 and x.shape[channel_axis] in (1, 3)
    if not (x.ndim == 3 or colour) or min(x.shape[1:], default=0) < 1:
        raise DataError(f"{source}: x must have shape N×H×W×3 (RGB) or N×H×W (grayscale), got {x.shape}")
    if len(x) == 0:
        raise DataError(f"{source}: holds no images")


def _check_targets(y: np.ndarray, n: int, source: str) -> None:
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise DataError(f"{source}: y must be a 1-D array of integer class labels, got {got}")
    if len(y) != n:
        raise DataError(f"{source}: x has {n} images but y has {len(y)} labels")
    if y.min() < 0:
        raise DataError(f"{source}: labels must be non-negative class indices, got {y.min()}")


def _classes(y: np.ndarray, names: tuple[str, ...] | None, source: str) -> tuple[int, tuple[str, ...]]:
    """The class count and names: from ``class_names`` when given, else ``max(y) + 1`` numbered names."""
    top = int(y.max())
    if names is not None:
        if top >= len(names):
            raise DataError(f"{source}: labels go up to {top} but class_names lists {len(names)} classes")
        return len(names), names
    if top >= MAX_CLASSES:
        raise DataError(f"{source}: labels go up to {top}; expected class indices 0..K-1 with K <= {MAX_CLASSES}")
    return top + 1, tuple(str(i) for i in range(top + 1))


def _to_nchw(x: np.ndarray, channels_first: bool) -> torch.Tensor:
    """N×H×W, N×H×W×C or N×C×H×W uint8 → contiguous N×3×H×W, repeating a single channel."""
    if not x.flags.writeable:
        x = x.copy()  # torch.from_numpy warns on read-only arrays
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif not channels_first:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.contiguous()


def _slice(full: LoadedData, spec: DataSpec) -> LoadedData:
    """Rows ``spec.start:spec.stop`` of ``full`` as views (no copy); an empty selection is an error."""
    n = len(full)
    rows = range(n)[spec.start : spec.stop]
    if len(rows) == 0:
        raise DataError(f"row slice {spec.slice_str()} of {spec.source_str()} selects no rows (it has {n})")
    return LoadedData(
        x=full.x[rows.start : rows.stop],
        y=full.y[rows.start : rows.stop],
        num_classes=full.num_classes,
        class_names=full.class_names,
        source=str(spec),
    )
