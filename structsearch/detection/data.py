"""Detection data: images with boxes, from COCO files or a built-in mosaic of classification images.

Two source forms (a detection study's ``data.train`` / ``data.val``)::

    coco:IMAGES_DIR:ANNOTATIONS.json[?size=HxW]
        COCO's format (what labelling tools export). Every image is resized to HxW (default: the
        first image's size) so the set is one uint8 tensor, like classification data; boxes are
        scaled with it. Boxes go from COCO's ``[x, y, w, h]`` to ``xyxy``; category ids map to
        contiguous labels in id order; ``iscrowd`` is kept per box (training ignores crowd boxes,
        the mAP metric treats them as COCO does); images without annotations are kept (empty).
        The whole file is validated before any image is decoded: a bad file is one DataError line.
    mosaic:SOURCE[?n=N&size=S&seed=K&objects=M]
        N canvases of S px (defaults 2000, 96, 0, 4), each with 1..M objects drawn from the
        classification source SOURCE (``digits``, ``digits:test``, ``npz:PATH[a:b]``, ...: any
        ``structsearch.data`` form), pasted at random positions and scales (18-40 % of the canvas)
        on a smooth random background, partly overlapping (at most half of the smaller box
        covered). Digits (bright strokes on black) are blended with ``max`` and boxed tightly
        around their strokes; other images are pasted opaque and boxed whole. Deterministic: the
        same string gives the same tensors and boxes in any process.
    synthetic:N[?iters=K&method=M&seed=S&batch=B]
        ``data.train`` only: N canvases synthesised from the teacher's checkpoint, labelled with its
        confident detections (:mod:`structsearch.detection.synthetic`); the options are
        classification's ``synthetic:`` options. It is made by the study, not loaded here.

Everything is decoded once per process (as :func:`structsearch.data.load_data` does) and kept in
memory as a :class:`DetectionData`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from structsearch.data import DataSpec, load_data
from structsearch.detection.source import DetectionSource
from structsearch.errors import DataError, one_line

#: Object side as a fraction of the canvas, and the most of a smaller box another may cover.
SCALE_RANGE = (0.18, 0.4)
MAX_COVER = 0.5
#: A digit pixel brighter than this (of 255) belongs to its stroke (tight boxes).
STROKE_LEVEL = 48


@dataclass(frozen=True, eq=False)
class DetectionData:
    """Images and their boxes, in memory. Tensors are shared by every caller: treat them as read-only."""

    #: uint8 N×3×H×W, RGB.
    x: Tensor
    #: Per image: float32 K×4 boxes ``(x1, y1, x2, y2)`` in pixels of ``x``.
    boxes: tuple[Tensor, ...]
    #: Per image: int64 K labels in ``[0, num_classes)``.
    labels: tuple[Tensor, ...]
    #: Per image: bool K, COCO's ``iscrowd``.
    crowd: tuple[Tensor, ...]
    num_classes: int
    class_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.x.shape[2]), int(self.x.shape[3]))

    def targets(
        self, rows: Tensor, device: torch.device | str = "cpu", *, crowd: bool = False
    ) -> list[dict[str, Tensor]]:
        """torchvision-style targets of ``rows``; crowd boxes dropped unless ``crowd`` (then with ``iscrowd``)."""
        out = []
        for r in rows.tolist():
            keep = torch.ones_like(self.crowd[r]) if crowd else ~self.crowd[r]
            t = {"boxes": self.boxes[r][keep].to(device), "labels": self.labels[r][keep].to(device)}
            if crowd:
                t["iscrowd"] = self.crowd[r].to(device, torch.int64)
            out.append(t)
        return out

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of images and targets: the data's identity in teacher and cache keys."""
        h = hashlib.sha256(f"structsearch-detection-v1 {tuple(self.x.shape)}\n".encode())
        h.update(self.x.contiguous().numpy().data.cast("B"))
        for b, y, c in zip(self.boxes, self.labels, self.crowd):
            h.update(b.numpy().tobytes() + y.numpy().tobytes() + c.numpy().tobytes() + b"|")
        return h.hexdigest()


# -- loading ---------------------------------------------------------------------------------------

_CACHE: dict[Any, DetectionData] = {}
_LOCK = threading.Lock()


def load_detection_data(text: str | DetectionSource) -> DetectionData:
    """Load (once per process, cached on the source and its files' identity) a detection source."""
    src = text if isinstance(text, DetectionSource) else DetectionSource.parse(text)
    if src.kind == "synthetic":
        raise DataError(
            f"{src} is synthesised from a detection teacher, not loaded: use it as a detection study's data.train"
        )
    key: Any = (str(src), _file_identity(src))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_coco(src) if src.kind == "coco" else make_mosaic(src)
        return _CACHE[key]


def _file_identity(src: DetectionSource) -> Any:
    if src.kind != "coco":
        return None
    try:
        st = Path(src.annotations).expanduser().stat()
    except OSError:
        return None  # reported by the loader
    return (st.st_mtime_ns, st.st_size)


# -- COCO ------------------------------------------------------------------------------------------


def _load_coco(src: DetectionSource) -> DetectionData:
    ann_path, root = Path(src.annotations).expanduser(), Path(src.path).expanduser()
    coco = _read_coco(ann_path)
    if not root.is_dir():
        raise DataError(f"coco images folder not found: {src.path}")
    images = sorted(coco["images"], key=lambda im: im["id"])
    files = [root / im["file_name"] for im in images]
    if missing := [f for f in files if not f.is_file()]:
        raise DataError(
            f"{ann_path.name}: {len(missing)} image file(s) not found under {src.path}, e.g. {missing[0].name}"
        )
    cats = sorted(c["id"] for c in coco["categories"])
    label_of = {cid: i for i, cid in enumerate(cats)}
    names = {c["id"]: str(c.get("name", c["id"])) for c in coco["categories"]}
    per_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)

    from PIL import Image

    first = Image.open(files[0])
    size = src.size or (first.height, first.width)
    x = torch.empty((len(files), 3, *size), dtype=torch.uint8)
    boxes, labels, crowd = [], [], []
    for i, (im, path) in enumerate(zip(images, files)):
        try:
            with Image.open(path) as img:
                w0, h0 = img.width, img.height
                rgb = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot decode image {path}: {one_line(e)}") from None
        x[i] = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
        scale = torch.tensor([size[1] / w0, size[0] / h0] * 2)
        anns = [a for a in per_image[im["id"]] if a["bbox"][2] > 0 and a["bbox"][3] > 0]  # zero-area: no box
        b = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]  # xywh -> xyxy
        boxes.append(b * scale)
        labels.append(torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64))
        crowd.append(torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool))
    return DetectionData(
        x, tuple(boxes), tuple(labels), tuple(crowd), len(cats), tuple(names[c] for c in cats), str(src)
    )


def _read_coco(path: Path) -> dict[str, Any]:
    """The annotation file, checked entry by entry; any problem is one DataError line naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"coco annotation file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read coco annotation file {path.name}: {one_line(e)}") from None
    where = path.name
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(f"{where}: a COCO file is an object with lists 'images', 'annotations' and 'categories'")
    if not data["images"] or not data["categories"]:
        raise DataError(f"{where}: needs at least one image and one category")
    image_ids: set[int] = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise DataError(f"{where}: images[{i}] needs an integer 'id' and a string 'file_name'")
        if im["id"] in image_ids:
            raise DataError(f"{where}: images[{i}] repeats image id {im['id']}")
        image_ids.add(im["id"])
    cat_ids = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DataError(f"{where}: categories[{i}] needs an integer 'id'")
        cat_ids.add(c["id"])
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise DataError(f"{where}: annotations[{i}] is not an object")
        if a.get("image_id") not in image_ids:
            raise DataError(
                f"{where}: annotations[{i}] refers to image_id {a.get('image_id')!r}, which is not in 'images'"
            )
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{where}: annotations[{i}] has category_id {a.get('category_id')!r}, not in 'categories'")
        bbox = a.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise DataError(f"{where}: annotations[{i}] bbox must be [x, y, w, h] (finite, w and h >= 0), got {bbox!r}")
        if a.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{where}: annotations[{i}] iscrowd must be 0 or 1, got {a.get('iscrowd')!r}")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# -- mosaic ----------------------------------------------------------------------------------------


def make_mosaic(src: DetectionSource) -> DetectionData:
    """The canvases of a ``mosaic:`` source (see the module docstring); deterministic in ``src``."""
    assert src.size is not None
    objects = load_data(src.objects_from)
    blend_max = DataSpec.parse(src.objects_from).kind == "digits"
    side = src.size[0]
    rng = np.random.default_rng(src.seed)
    x = torch.empty((src.n, 3, side, side), dtype=torch.uint8)
    boxes, labels = [], []
    for i in range(src.n):
        canvas = _background(rng, side)
        placed: list[list[float]] = []
        kinds: list[int] = []
        for _ in range(int(rng.integers(1, src.objects + 1))):
            row = int(rng.integers(len(objects)))
            h, w = _object_shape(rng, side)
            top, left = _free_spot(rng, side, h, w, placed)
            patch = F.interpolate(objects.x[row : row + 1].float(), size=(h, w), mode="bilinear", antialias=True)
            patch = patch[0].round().clamp(0, 255).to(torch.uint8)
            region = canvas[:, top : top + h, left : left + w]
            if blend_max:
                region.copy_(torch.maximum(region, patch))
                box = _stroke_box(patch, top, left)
            else:
                region.copy_(patch)
                box = [left, top, left + w, top + h]
            placed.append([float(v) for v in box])
            kinds.append(int(objects.y[row]))
        x[i] = canvas
        boxes.append(torch.tensor(placed, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(kinds, dtype=torch.int64))
    crowd = tuple(torch.zeros(len(b), dtype=torch.bool) for b in boxes)
    return DetectionData(x, tuple(boxes), tuple(labels), crowd, objects.num_classes, objects.class_names, str(src))


def _background(rng: np.random.Generator, side: int) -> Tensor:
    """Smooth dark noise: a coarse random grid upsampled, so the detector cannot key on flat black."""
    coarse = torch.from_numpy(rng.integers(0, 64, size=(1, 3, 4, 4)).astype(np.float32))
    return F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[0].to(torch.uint8)


def _object_shape(rng: np.random.Generator, side: int) -> tuple[int, int]:
    s = rng.uniform(*SCALE_RANGE) * side
    aspect = rng.uniform(0.8, 1.25)
    return max(4, int(round(s * math.sqrt(aspect)))), max(4, int(round(s / math.sqrt(aspect))))


def _free_spot(rng: np.random.Generator, side: int, h: int, w: int, placed: list[list[float]]) -> tuple[int, int]:
    """A random top-left corner where the new box covers at most :data:`MAX_COVER` of any smaller box
    and vice versa (10 tries; the last try is kept whatever it covers)."""
    for _ in range(10):
        top, left = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
        if all(_cover((left, top, left + w, top + h), b) <= MAX_COVER for b in placed):
            break
    return top, left


def _cover(a: tuple[int, int, int, int], b: list[float]) -> float:
    """Intersection over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-9)


def _stroke_box(patch: Tensor, top: int, left: int) -> list[int]:
    """The tight box around a digit's stroke pixels (the whole patch when it has none)."""
    mask = patch.max(0).values > STROKE_LEVEL
    if not bool(mask.any()):
        return [left, top, left + patch.shape[2], top + patch.shape[1]]
    ys, xs = torch.where(mask)
    return [left + int(xs.min()), top + int(ys.min()), left + int(xs.max()) + 1, top + int(ys.max()) + 1]
