"""Readers for each source kind: file system checks, an identity for caching, and decoding to NumPy.

Each kind registers a reader with :func:`register_source` (like ``register_family``). A reader does
the cheap part eagerly (stat the file, list the folder, resolve the torchvision class) and returns a
:class:`Prepared` whose ``identity`` changes whenever the data on disk changes and whose ``decode``
does the expensive part. The loader calls ``decode`` only when
its cache has no entry with that identity, so a search decodes its data once per process.

Decoded arrays are validated and converted to tensors in one place (``loading._finalize``) so
every kind gets the same checks and messages.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import zipfile
import zlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from structsearch.data.spec import DataSpec
from structsearch.data.splits import split_train_val
from structsearch.errors import DataError, one_line

#: File name endings ImageFolder sources read (torchvision's IMG_EXTENSIONS).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Share of scikit-learn's digits held out as ``digits:test`` and the seed that picks it. Constants,
#: not options: changing either would silently move images between the two parts.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0

#: torchvision datasets whose array attributes are read directly (others are decoded image by image).
KNOWN_TORCHVISION = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "SVHN", "STL10")

_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class RawArrays:
    """Decoded but unvalidated arrays: x is N×H×W×C (or N×C×H×W when ``channels_first``) or N×H×W."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...] | None = None
    channels_first: bool = False


@dataclass(frozen=True)
class Prepared:
    """What the loader needs to consult its cache and, on a miss, decode."""

    #: The spec as a cache key: download off, the torchvision name spelled as torchvision does.
    canonical: DataSpec
    #: Changes whenever the bytes on disk may have changed (path, mtime, size).
    identity: Hashable
    decode: Callable[[], RawArrays]
    #: The identity to store after decoding, for sources that decoding itself changes (a download
    #: fills the root); ``None`` keeps ``identity``, which is right when a file changes mid-read.
    identity_after_decode: Callable[[], Hashable] | None = None


#: A source kind's reader: checks the files of an (unsliced) spec and says how to decode them.
Reader = Callable[[DataSpec], Prepared]

_READERS: dict[str, Reader] = {}


def register_source(kind: str) -> Callable[[Reader], Reader]:
    """Decorator: ``reader`` prepares data of ``kind`` (one of :data:`structsearch.data.spec.KINDS`)."""

    def add(reader: Reader) -> Reader:
        if _READERS.setdefault(kind, reader) is not reader:
            raise ValueError(f"data source '{kind}' is already registered")
        return reader

    return add


def prepare(spec: DataSpec) -> Prepared:
    """Check that ``spec``'s files exist and say how to decode them (the spec's slice is ignored)."""
    spec = spec.unsliced()  # only torchvision specs may carry download; it drops it from its key
    return _READERS[spec.kind](spec)


@register_source("synthetic")
def _refuse_synthetic(spec: DataSpec) -> Prepared:
    raise DataError(
        f"{spec} is synthesised from a teacher, not loaded from files: use it as a search's data.train or "
        "`structsearch proxy --data`, or write it to a file with `structsearch synthesize --out FILE.npz`"
    )


# -- npz -------------------------------------------------------------------------------------------


@register_source("npz")
def _prepare_npz(spec: DataSpec) -> Prepared:
    path = Path(spec.path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"data file not found: {spec.path}") from None
    except OSError as e:
        raise DataError(f"cannot access data file {spec.path}: {one_line(e)}") from None
    if path.is_dir():
        raise DataError(f"data file is a folder, not a .npz archive: {spec.path} (use imagefolder:PATH for folders)")
    identity = ("npz", str(path.resolve()), st.st_mtime_ns, st.st_size)
    return Prepared(spec, identity, lambda: _read_npz(path, spec.path))


def _read_npz(path: Path, shown: str) -> RawArrays:
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise DataError(f"cannot read NumPy archive {shown}: {one_line(e)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{shown} holds a single array, not an .npz archive with arrays x and y")
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            held = ", ".join(archive.files) or "nothing"
            raise DataError(f"{shown}: archive has no array {' or '.join(missing)} (it holds {held}); need x and y")
        try:
            x, y = archive["x"], archive["y"]
            names = archive["class_names"] if "class_names" in archive.files else None
        except _NPZ_ERRORS as e:
            raise DataError(f"cannot read NumPy archive {shown}: {one_line(e)}") from None
    return RawArrays(x, y, _names_from_array(names, shown))


def _names_from_array(names: np.ndarray | None, shown: str) -> tuple[str, ...] | None:
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{shown}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names.tolist())


# -- imagefolder -----------------------------------------------------------------------------------


@register_source("imagefolder")
def _prepare_imagefolder(spec: DataSpec) -> Prepared:
    given = Path(spec.path).expanduser()
    if not given.exists():
        raise DataError(f"data folder not found: {spec.path}")
    if not given.is_dir():
        raise DataError(f"imagefolder path is not a folder: {spec.path}")
    root = given.resolve()
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"imagefolder {spec.path} has {len(classes)} class folder(s); need at least 2 (one sub-folder of images per class)"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = _images_under(root, name, spec.path)
        if not found:
            raise DataError(f"class folder {given / name} has no images ({' '.join(IMAGE_EXTENSIONS)})")
        files.extend((path, label) for path in found)
    identity = ("imagefolder", str(root), _stat_digest(files, root))
    return Prepared(spec, identity, lambda: _read_imagefolder(files, tuple(classes), spec.size))


def _images_under(root: Path, name: str, shown: str) -> list[Path]:
    """Image files below ``root / name`` in sorted order (recursively, like ImageFolder; hidden
    entries skipped), as resolved paths.

    Symlinks are followed only while they stay inside ``root`` (the resolved image folder): one
    that leads out is a one-line error, so a folder under a service's data root can never read
    files from elsewhere. A folder reached twice (a link back up the tree) is walked once.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for current, dirs, names in os.walk(root / name, followlinks=True):
        real = _inside(Path(current), root, shown)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            _inside(Path(current) / n, root, shown)
            for n in sorted(names)
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def _inside(path: Path, root: Path, shown: str) -> Path:
    """``path`` resolved, when that is inside ``root``; else a :class:`DataError`."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise DataError(
            f"imagefolder {shown}: '{path.relative_to(root)}' is a symlink that leads outside the folder; "
            "copy the files in, or point the spec at the folder it leads to"
        )
    return real


def _stat_digest(files: list[tuple[Path, int]], root: Path) -> str:
    """A digest of every file's name, mtime and size: any added, removed or rewritten image changes it."""
    h = hashlib.sha256()
    for path, label in files:
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{label}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def _read_imagefolder(
    files: list[tuple[Path, int]], classes: tuple[str, ...], size: tuple[int, int] | None
) -> RawArrays:
    first = _decode_image(files[0][0], size)
    h, w = first.shape[:2]
    x = np.empty((len(files), h, w, 3), dtype=np.uint8)
    x[0] = first
    for i, (path, _) in enumerate(files[1:], start=1):
        x[i] = _decode_image(path, (h, w))
    y = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    return RawArrays(x, y, classes)


def _decode_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image  # deferred: only image folders need PIL

    try:
        with Image.open(path) as image:
            return _pil_to_rgb(image, size)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {path}: {one_line(e)}") from None


def _pil_to_rgb(image: Any, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as H×W×3 uint8, resized (bilinear, aspect ratio not kept) to ``size`` = (H, W)."""
    from PIL import Image

    rgb = image.convert("RGB")
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


# -- torchvision -----------------------------------------------------------------------------------


@register_source("torchvision")
def _prepare_torchvision(spec: DataSpec) -> Prepared:
    dataset_cls = _torchvision_class(spec.name)
    canonical = replace(spec, name=dataset_cls.__name__, download=False)
    root = Path(spec.path).expanduser()

    def identity() -> Hashable:
        # The root's mtime changes when a dataset folder appears or goes; the files inside a
        # torchvision root are written once (by a download) and then never change.
        try:
            root_mtime = root.stat().st_mtime_ns
        except OSError:
            root_mtime = None  # missing root: decode reports it (or downloads into it)
        return ("torchvision", dataset_cls.__name__, str(root.resolve()), spec.split, root_mtime)

    return Prepared(
        canonical,
        identity(),
        lambda: _read_torchvision(dataset_cls, root, spec),
        identity_after_decode=identity if spec.download else None,
    )


def _torchvision_class(name: str) -> type:
    """The torchvision dataset class called ``name`` (case-insensitive), or DataError."""
    import torchvision.datasets as tvd  # deferred: importing torchvision.datasets is slow

    base = tvd.VisionDataset
    generic = {"VisionDataset", "DatasetFolder", "ImageFolder", "FakeData"}
    by_name = {
        attr.lower(): obj
        for attr in dir(tvd)
        if isinstance(obj := getattr(tvd, attr), type) and issubclass(obj, base) and attr not in generic
    }
    found = by_name.get(name.lower())
    if found is None:
        raise DataError(f"unknown torchvision dataset {name!r}; e.g. {', '.join(KNOWN_TORCHVISION)}")
    return found


def _read_torchvision(dataset_cls: type, root: Path, spec: DataSpec) -> RawArrays:
    name = dataset_cls.__name__
    kwargs = _torchvision_kwargs(dataset_cls, spec, root)
    try:
        dataset = dataset_cls(str(root), **kwargs)
    except Exception as e:  # noqa: BLE001 -- third-party code reading user files; any failure is a data problem
        if spec.download:
            raise DataError(
                f"could not download or read torchvision dataset {name} into {root}: {one_line(e)}"
            ) from None
        if isinstance(e, RuntimeError):  # what torchvision raises for missing or corrupt files
            raise DataError(
                f"torchvision dataset {name} ({spec.split}) not found or incomplete under {root}: "
                f"pass --download (or add ?download=1) or put the files under {root}"
            ) from None
        raise DataError(f"cannot load torchvision dataset {name} from {root}: {one_line(e)}") from None
    return _arrays_from_dataset(dataset, name)


def _torchvision_kwargs(dataset_cls: type, spec: DataSpec, root: Path) -> dict[str, Any]:
    params = inspect.signature(dataset_cls).parameters
    name = dataset_cls.__name__
    kwargs: dict[str, Any] = {}
    if "train" in params:
        kwargs["train"] = spec.split == "train"
    elif "split" in params:
        kwargs["split"] = spec.split
    else:
        raise DataError(f"torchvision dataset {name} has no train/test split; use imagefolder:PATH or npz:PATH")
    if spec.download:
        if "download" not in params:
            raise DataError(f"torchvision cannot download {name}; put its files under {root}")
        kwargs["download"] = True
    return kwargs


def _arrays_from_dataset(dataset: Any, name: str) -> RawArrays:
    """Read the dataset's in-memory arrays when it has them (CIFAR, MNIST, SVHN, ...), else decode items."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    classes = getattr(dataset, "classes", None)
    names = tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) and classes else None
    if isinstance(data, (np.ndarray, torch.Tensor)) and targets is not None:
        x = data.numpy() if isinstance(data, torch.Tensor) else data
        y = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
        if x.dtype == np.uint8 and y.ndim == 1 and len(x) == len(y):
            channels_first = x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3)
            return RawArrays(x, y, names, channels_first=channels_first)
    return _arrays_by_item(dataset, name, names)


def _arrays_by_item(dataset: Any, name: str, names: tuple[str, ...] | None) -> RawArrays:
    """Fallback for datasets without array attributes: decode every item, resize to the first's size."""
    n = len(dataset)
    if n == 0:
        raise DataError(f"torchvision dataset {name} is empty")
    first = None
    x = None
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        image, target = dataset[i]
        if not isinstance(target, (int, np.integer)):
            raise DataError(
                f"torchvision dataset {name} has non-integer targets ({type(target).__name__}); unsupported"
            )
        array = _pil_to_rgb(image, None if first is None else first)
        if x is None:
            first = array.shape[:2]
            x = np.empty((n, *array.shape), dtype=np.uint8)
        x[i], y[i] = array, int(target)
    assert x is not None  # n > 0, so the loop allocated it
    return RawArrays(x, y, names)


# -- digits ----------------------------------------------------------------------------------------


@register_source("digits")
def _prepare_digits(spec: DataSpec) -> Prepared:
    return Prepared(spec, ("digits", spec.split), lambda: _read_digits(spec.split))


def _read_digits(split: str) -> RawArrays:
    """scikit-learn's 1797 8×8 digits (0..16 scaled to 0..255), the train part or the held-out test part."""
    from sklearn.datasets import load_digits  # deferred: bundled with scikit-learn, no download

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    rest, held_out = split_train_val(torch.from_numpy(y), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    rows = (held_out if split == "test" else rest).numpy()
    return RawArrays(x[rows], y[rows], tuple(str(c) for c in bunch.target_names))
