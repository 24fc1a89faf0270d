"""Detection data sources as strings: ``coco:``, ``mosaic:`` and ``synthetic:`` (syntax only).

Parsing reads no file and imports no torch, so the API can validate a detection study's data when
it is submitted without loading torch into every API process; loading is
:func:`structsearch.detection.data.load_detection_data`. The grammar is in
:mod:`structsearch.detection.data`'s docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from structsearch.data.spec import DataSpec, SynthesisSpec, parse_size
from structsearch.errors import DataError

FORMS = (
    "coco:IMAGES_DIR:ANNOTATIONS.json[?size=HxW], mosaic:SOURCE[?n=N&size=S&seed=K&objects=M] "
    "or synthetic:N[?iters=K&method=M&seed=S&batch=B] (data.train only)"
)
_OPTIONS_RE = re.compile(r"\?([A-Za-z_]+=[^?&]*(?:&[A-Za-z_]+=[^?&]*)*)$")


@dataclass(frozen=True)
class DetectionSource:
    """A parsed source string (syntax only: parsing reads no file)."""

    kind: str  # "coco", "mosaic" or "synthetic"
    #: coco: images folder and annotation file; mosaic: the object source (a classification spec);
    #: synthetic: the classification form of the same ``synthetic:`` spec (what :attr:`synthesis` reads).
    path: str = ""
    annotations: str = ""
    objects_from: str = ""
    size: tuple[int, int] | None = None
    n: int = 2000
    seed: int = 0
    objects: int = 4

    @classmethod
    def parse(cls, text: str) -> DetectionSource:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"empty detection data source; use {FORMS}")
        text = text.strip()
        if text.partition(":")[0].lower() == "synthetic":  # classification's grammar and messages
            return cls("synthetic", objects_from=str(DataSpec.parse(text)))
        options: dict[str, str] = {}
        if m := _OPTIONS_RE.search(text):
            options = dict(item.partition("=")[::2] for item in m.group(1).split("&"))
            text = text[: m.start()]
        kind, _, rest = text.partition(":")
        if kind == "coco":
            images, _, annotations = rest.rpartition(":")
            if not images or not annotations:
                raise DataError(f"coco data needs an images folder and an annotation file; use {FORMS}")
            _only(options, ("size",), "coco")
            size = parse_size(options["size"]) if "size" in options else None
            return cls("coco", path=images, annotations=annotations, size=size)
        if kind == "mosaic":
            if not rest:
                raise DataError(f"mosaic data needs an object source, e.g. mosaic:digits; use {FORMS}")
            DataSpec.parse(rest)  # the object source's own syntax errors, one line
            _only(options, ("n", "size", "seed", "objects"), "mosaic")
            numbers = {k: _parse_int(k, v) for k, v in options.items() if k != "size"}
            side = _parse_int("size", options.get("size", "96"))
            src = cls(
                "mosaic",
                objects_from=rest,
                size=(side, side),
                n=numbers.get("n", cls.n),
                seed=numbers.get("seed", cls.seed),
                objects=numbers.get("objects", cls.objects),
            )
            if src.n < 1 or src.objects < 1 or side < 16:
                raise DataError("mosaic data needs n >= 1, objects >= 1 and size >= 16")
            return src
        raise DataError(f"unknown detection data source {text!r}; use {FORMS}")

    @property
    def synthesis(self) -> SynthesisSpec | None:
        """How a ``synthetic:`` source is made from the teacher; ``None`` for every other kind."""
        return DataSpec.parse(self.objects_from).synthesis if self.kind == "synthetic" else None

    def __str__(self) -> str:
        if self.kind == "synthetic":
            return self.objects_from
        if self.kind == "coco":
            size = f"?size={self.size[0]}x{self.size[1]}" if self.size else ""
            return f"coco:{self.path}:{self.annotations}{size}"
        assert self.size is not None
        return f"mosaic:{self.objects_from}?n={self.n}&size={self.size[0]}&seed={self.seed}&objects={self.objects}"


def _only(options: dict[str, str], allowed: tuple[str, ...], kind: str) -> None:
    for key in options:
        if key not in allowed:
            raise DataError(f"unknown {kind} data option {key!r}; {kind} data takes {', '.join(allowed)}")


def _parse_int(key: str, value: str) -> int:
    if not value.isdigit():
        raise DataError(f"detection data option {key} must be a non-negative integer, got {value!r}")
    return int(value)
