"""A content-addressed, on-disk cache of teacher outputs, shared by every trial and process.

Why: in a short proxy run the teacher's forward pass costs as much as a large part of the
student's training step, yet it is the same for every candidate. So teacher logits (and, for
feature KD, the tapped stage outputs, stored as float16) are computed once per *key* and then only
read.

The key is the sha256 of everything that determines the outputs -- teacher name and kwargs,
checkpoint file hash, data fingerprint, the exact row indices, preprocessing, augmentation and its
seed, the number of augmented views, the feature taps and a format version -- so any change to an
input gives a new entry and a stale one can never be read.

Layout: ``<dir>/<key>/<array>.npy`` plus ``meta.json``. Every file is written to a temporary name
and renamed into place (atomic on POSIX), and ``meta.json`` -- which lists each array's shape and
dtype and a checksum -- is written last, so a reader sees either a complete entry or none.
Concurrent workers computing the same entry write identical bytes; the last rename wins. Arrays are
opened memory-mapped, so large feature maps are paged in on demand instead of copied. An entry that
does not read back exactly as ``meta.json`` describes is treated as missing and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from structsearch.atomic import atomic_write

log = logging.getLogger(__name__)

#: Environment variable that overrides the default cache directory.
CACHE_ENV = "STRUCTSEARCH_CACHE"
META = "meta.json"
#: Arrays up to this size get a full checksum on every read; larger ones are checked by shape only
#: (reading a gigabyte of features to hash it would defeat memory-mapping).
_CHECKSUM_LIMIT = 64 << 20


def default_cache_dir() -> Path:
    """``$STRUCTSEARCH_CACHE`` if set, else ``$STRUCTSEARCH_HOME/cache`` (beside studies and teachers)."""
    from structsearch.paths import home

    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else home() / "cache"


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 hex digest of ``parts`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} into a cache key")


def _checksum(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    # a memoryview with a zero in its shape cannot be cast (an empty array: no boxes in a synthetic set)
    return hashlib.sha256(data.data.cast("B") if data.size else b"").hexdigest()


class TeacherCache:
    """Teacher outputs on disk, one directory per key (see the module docstring)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.directory / key

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key`` (memory-mapped, read-only), or ``None`` if missing or corrupt."""
        entry = self.path(key)
        meta_path = entry / META
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            arrays: dict[str, np.ndarray] = {}
            for name, info in meta["arrays"].items():
                arr = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                    raise ValueError(f"{name}: {arr.shape} {arr.dtype} but meta says {info['shape']} {info['dtype']}")
                if arr.nbytes <= _CHECKSUM_LIMIT and _checksum(arr) != info["sha256"]:
                    raise ValueError(f"{name}: checksum mismatch")
                arrays[name] = arr
            return arrays
        except Exception as e:  # noqa: BLE001 - any unreadable entry is a miss, never fatal
            log.warning("teacher cache entry %s is unreadable (%s); recomputing it", entry, e)
            return None

    def save(self, key: str, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> None:
        """Store ``arrays`` under ``key`` atomically (arrays first, ``meta.json`` last).

        A cache that cannot be written (read-only disk, full disk) only costs speed: it is logged,
        not raised.
        """
        entry = self.path(key)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            meta: dict[str, Any] = {"key": key, "info": dict(info or {}), "arrays": {}}
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                atomic_write(entry / f"{name}.npy", partial(np.save, arr=arr, allow_pickle=False))
                meta["arrays"][name] = {
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                    "sha256": _checksum(arr) if arr.nbytes <= _CHECKSUM_LIMIT else None,
                }
            text = json.dumps(meta, indent=1, default=_json_default)
            atomic_write(entry / META, lambda f: f.write(text.encode()))
        except OSError as e:
            log.warning("cannot write teacher cache entry %s (%s); continuing without it", entry, e)

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Mapping[str, np.ndarray]],
        info: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], bool]:
        """``(arrays, hit)``: the stored arrays, or ``compute()``'s result after storing it."""
        found = self.load(key)
        if found is not None:
            return found, True
        arrays = dict(compute())
        self.save(key, arrays, info)
        return arrays, False
