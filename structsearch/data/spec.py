"""`DataSpec`: which images a run uses, as one frozen value parsed from a command-line string.

Grammar (``str(spec)`` writes the canonical form and ``DataSpec.parse`` reads it back)::

    npz:PATH                      NumPy archive with x (uint8 N×H×W×3 or N×H×W) and y (int N)
    imagefolder:PATH              class sub-folders of images (torchvision ImageFolder layout)
    torchvision:NAME:ROOT         a torchvision dataset class (CIFAR10, MNIST, SVHN, ...), train split
    torchvision:NAME:ROOT:test    ... its test split
    digits                        scikit-learn's bundled 8×8 digits, the part that is not held out
    digits:test                   the held-out 20 % of digits (stratified, fixed seed), disjoint
    synthetic:N                   N images synthesised from the teacher (data-free distillation)

Every form takes an optional row slice and options, in either order, at the end::

    npz:/work/shared/data/cifar10/test.npz[:5000]
    torchvision:CIFAR10:/data:test[5000:]?download=1
    imagefolder:/data/flowers?size=64x64

* ``[start:stop]`` selects rows with Python slice semantics (negative bounds count from the end,
  no step). It is applied after the split is chosen, so ``digits:test[:100]`` is 100 held-out rows.
* ``?download=1`` (torchvision only) lets torchvision download missing files. It does not change
  *which* data is loaded, so it takes no part in caching; the CLI's ``--download`` sets it too.
* ``?size=H`` or ``?size=HxW`` (imagefolder only) resizes every image to that size; without it
  images are resized to the first image's size.
* ``synthetic:N?iters=K&method=M&seed=S&batch=B`` (every option optional) names a set synthesised
  from the teacher's weights when the user has no data: ``method`` is ``auto`` (the default:
  DeepInversion for teachers with BatchNorm, PSAQ-ViT otherwise), ``deepinversion`` or ``psaq``;
  ``iters`` the optimisation steps per batch (default 2000, as in the DeepInversion paper); ``seed``
  the random start; ``batch`` the images optimised together (default 256; BatchNorm statistics are
  matched per batch, so it changes the result). It takes no row slice. Only a search
  (``data.train``), ``structsearch proxy --data`` and ``structsearch synthesize`` can produce it,
  because it needs the teacher: ``load_data`` refuses it. See
  :mod:`structsearch.distill.synthesis`.

The spec says *what* to load; :func:`structsearch.data.load_data` does the loading and
validation. Parsing never touches the file system, so a spec can be validated (and stored) on a
machine that does not hold the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TypedDict

from structsearch.errors import DataError

#: The source kinds, in the order error messages list them.
KINDS: tuple[str, ...] = ("npz", "imagefolder", "torchvision", "digits", "synthetic")

#: The valid forms, quoted by every "unknown source" error so the user sees what to type.
FORMS = (
    "npz:PATH, imagefolder:PATH, torchvision:NAME:ROOT[:test], digits[:test], "
    "each optionally followed by [start:stop] and ?download=1 (torchvision) or ?size=HxW (imagefolder); "
    "or synthetic:N[?iters=K&method=auto|deepinversion|psaq&seed=S&batch=B] (synthesised from the teacher)"
)

#: Ways to synthesise data from a teacher; ``auto`` picks by the teacher's layers (see
#: :mod:`structsearch.distill.synthesis`).
SYNTHESIS_METHODS: tuple[str, ...] = ("auto", "deepinversion", "psaq")

SPLITS: tuple[str, ...] = ("train", "test")

_SLICE_RE = re.compile(r"\[(-?\d+)?:(-?\d+)?\]$")
_BRACKET_RE = re.compile(r"\[[^\[\]]*\]$")
_OPTIONS_RE = re.compile(r"\?([A-Za-z_]+=[^?&\[\]]*(?:&[A-Za-z_]+=[^?&\[\]]*)*)$")
_SIZE_RE = re.compile(r"^(\d+)(?:[xX×](\d+))?$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class SynthesisSpec:
    """How a ``synthetic:N`` set is made from the teacher (what its options say).

    Every field changes which images come out, so every field is part of the set's cache key.
    """

    #: Number of images.
    n: int
    method: str = "auto"
    #: Optimisation steps per batch (DeepInversion: 2000 at batch 256 on CIFAR-10).
    iterations: int = 2000
    seed: int = 0
    #: Images optimised together; BatchNorm statistics are matched over this batch.
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name, low in (("n", 1), ("iterations", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(
                    f"synthetic data: {_SYNTH_OPTION_OF.get(name, name)} must be an integer >= {low}, got {value!r}"
                )
        if self.method not in SYNTHESIS_METHODS:
            raise DataError(
                f"synthetic data: unknown method {self.method!r}; use one of {', '.join(SYNTHESIS_METHODS)}"
            )

    def options_str(self) -> str:
        """``iters=K&method=M&...`` for the options that differ from their defaults (may be empty)."""
        default = SynthesisSpec(1)
        parts = []
        for option, name in _SYNTH_OPTIONS.items():
            if getattr(self, name) != getattr(default, name):
                parts.append(f"{option}={getattr(self, name)}")
        return "&".join(parts)


#: ``synthetic:`` option names and the :class:`SynthesisSpec` fields they set, in canonical order.
_SYNTH_OPTIONS = {"iters": "iterations", "method": "method", "seed": "seed", "batch": "batch_size"}
_SYNTH_OPTION_OF = {field: option for option, field in _SYNTH_OPTIONS.items()} | {"n": "the image count N"}


class _SourceFields(TypedDict, total=False):
    """The :class:`DataSpec` fields a spec's body and options set (parsing builds them up)."""

    path: str
    name: str
    split: str
    download: bool
    size: tuple[int, int]


@dataclass(frozen=True)
class DataSpec:
    """One data source plus an optional row slice.

    Fields that do not apply to a kind keep their defaults (``__post_init__`` enforces this, so two
    specs that load the same rows compare equal and share one cache entry).
    """

    kind: str
    #: npz file, imagefolder directory or torchvision root; empty for digits.
    path: str = ""
    #: torchvision dataset class name, e.g. ``CIFAR10``; empty for other kinds.
    name: str = ""
    #: ``train`` or ``test``; only torchvision and digits have a test split.
    split: str = "train"
    #: Let torchvision download missing files (torchvision only; not part of the data's identity).
    download: bool = False
    #: Common (H, W) images of an imagefolder are resized to; ``None`` = the first image's size.
    size: tuple[int, int] | None = None
    start: int | None = None
    stop: int | None = None
    #: How a ``synthetic`` set is made from the teacher; ``None`` for every other kind.
    synthesis: SynthesisSpec | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown data source kind {self.kind!r}; valid forms: {FORMS}")
        if self.split not in SPLITS:
            raise DataError(f"unknown split {self.split!r} in {self.kind} spec; use train or test")
        self._check_fields_apply()
        for bound in (self.start, self.stop):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
                raise DataError(f"row slice bounds must be integers, got {bound!r}")
        if self.size is not None and not _valid_size(self.size):
            raise DataError(f"size must be two positive integers (H, W), got {self.size!r}")

    def _check_fields_apply(self) -> None:
        """Reject fields that a kind ignores, so a typo cannot silently load other data."""
        needs_path = self.kind not in ("digits", "synthetic")
        if needs_path and not self.path:
            raise DataError(f"{self.kind} data needs a path; valid forms: {FORMS}")
        if not needs_path and self.path:
            raise DataError(f"{self.kind} data takes no path, got {self.path!r}")
        if (self.kind == "synthetic") != (self.synthesis is not None):
            what = "needs an image count (synthetic:N)" if self.kind == "synthetic" else "takes no synthesis options"
            raise DataError(f"{self.kind} data {what}")
        if self.kind == "synthetic" and (self.start is not None or self.stop is not None):
            raise DataError("synthetic data takes no row slice; choose the number of images instead (synthetic:N)")
        if (self.kind == "torchvision") != bool(self.name):
            what = "needs a dataset name (torchvision:NAME:ROOT)" if self.kind == "torchvision" else "takes no name"
            raise DataError(f"{self.kind} data {what}")
        if self.split != "train" and self.kind not in ("torchvision", "digits"):
            raise DataError(f"{self.kind} data has no test split; point it at the test file or folder")
        if self.download and self.kind != "torchvision":
            raise DataError("download applies to torchvision data only")
        if self.size is not None and self.kind != "imagefolder":
            raise DataError("size applies to imagefolder data only")

    # -- parsing -----------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | DataSpec) -> DataSpec:
        """Read a spec from its command-line form (see the module docstring); raise DataError."""
        if isinstance(text, DataSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"empty data spec; valid forms: {FORMS}")
        body, start, stop, options = _split_suffixes(text.strip())
        kind, _, rest = body.partition(":")
        kind = kind.lower()
        if kind not in KINDS:
            raise DataError(f"unknown data source {text.strip()!r}; valid forms: {FORMS}")
        if kind == "synthetic":
            return cls(kind=kind, start=start, stop=stop, synthesis=_parse_synthesis(rest, options))
        fields = _parse_body(kind, rest)
        fields.update(_parse_options(kind, options))
        return cls(kind=kind, start=start, stop=stop, **fields)

    # -- formatting --------------------------------------------------------------------------------

    def __str__(self) -> str:
        return self.source_str() + self.slice_str() + self.options_str()

    def source_str(self) -> str:
        """The source without slice or options, e.g. ``torchvision:CIFAR10:/data:test``."""
        test = ":test" if self.split == "test" else ""
        if self.kind == "digits":
            return "digits" + test
        if self.synthesis is not None:
            return f"synthetic:{self.synthesis.n}"
        if self.kind == "torchvision":
            return f"torchvision:{self.name}:{self.path}{test}"
        return f"{self.kind}:{self.path}"

    def slice_str(self) -> str:
        """``[start:stop]``, or empty when the spec selects every row."""
        if self.start is None and self.stop is None:
            return ""
        return f"[{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}]"

    def options_str(self) -> str:
        """``?download=1&size=HxW`` for the options that differ from their defaults."""
        options = []
        if self.download:
            options.append("download=1")
        if self.size is not None:
            options.append(f"size={self.size[0]}x{self.size[1]}")
        if self.synthesis is not None and self.synthesis.options_str():
            options.append(self.synthesis.options_str())
        return "?" + "&".join(options) if options else ""

    # -- derived specs -----------------------------------------------------------------------------

    @property
    def is_sliced(self) -> bool:
        return self.start is not None or self.stop is not None

    def with_download(self, download: bool = True) -> DataSpec:
        """The same spec with downloading switched on or off (what the CLI's ``--download`` does)."""
        if download and self.kind != "torchvision":
            return self  # nothing to download; a flag meant for torchvision data is harmless here
        return replace(self, download=download)

    def unsliced(self) -> DataSpec:
        """The whole source: the spec without its row slice."""
        return replace(self, start=None, stop=None)


def _valid_size(size: object) -> bool:
    return (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    )


def _split_suffixes(text: str) -> tuple[str, int | None, int | None, str]:
    """Peel ``[start:stop]`` and ``?options`` (in either order) off the end of ``text``."""
    start: int | None = None
    stop: int | None = None
    options = ""
    seen_slice = False
    for _ in range(2):
        if not seen_slice and (m := _SLICE_RE.search(text)):
            start = int(m.group(1)) if m.group(1) is not None else None
            stop = int(m.group(2)) if m.group(2) is not None else None
            text, seen_slice = text[: m.start()], True
        elif not seen_slice and (bad := _BRACKET_RE.search(text)):
            raise DataError(f"bad row slice {bad.group(0)!r} in {text!r}; use [start:stop] with integers (no step)")
        elif not options and (m := _OPTIONS_RE.search(text)):
            options, text = m.group(1), text[: m.start()]
        else:
            break
    return text, start, stop, options


def _parse_body(kind: str, rest: str) -> _SourceFields:
    """The kind-specific part after ``KIND:`` as DataSpec fields."""
    if kind == "digits":
        if rest not in ("", *SPLITS):
            raise DataError(f"digits takes ':test' or nothing, got 'digits:{rest}'")
        return {"split": rest or "train"}
    if kind == "torchvision":
        name, _, root = rest.partition(":")
        split = "train"
        for s in SPLITS:
            if root.endswith(":" + s):
                root, split = root[: -len(s) - 1], s
                break
        if not name or not root:
            raise DataError(
                f"torchvision data needs a dataset name and a root, e.g. torchvision:CIFAR10:/data; got {rest!r}"
            )
        return {"name": name, "path": root, "split": split}
    if not rest:
        raise DataError(f"{kind} data needs a path, e.g. {kind}:/path/to/data")
    return {"path": rest}


def _parse_options(kind: str, options: str) -> _SourceFields:
    """``download=1&size=32x32`` as DataSpec fields; unknown or inapplicable keys are errors."""
    fields: _SourceFields = {}
    if not options:
        return fields
    allowed = {"torchvision": "download", "imagefolder": "size"}.get(kind)
    for item in options.split("&"):
        key, _, value = item.partition("=")
        key = key.lower()
        if key != allowed:
            hint = f"the only option of {kind} data is {allowed}" if allowed else f"{kind} data takes no options"
            raise DataError(f"unknown data option {key!r}; {hint}")
        if key == "download":
            fields["download"] = _parse_download(value)
        else:
            fields["size"] = parse_size(value)
    return fields


def _parse_synthesis(count: str, options: str) -> SynthesisSpec:
    """``N`` and ``iters=K&method=M&seed=S&batch=B`` of a ``synthetic:`` spec."""
    if not count.isdigit():
        raise DataError(f"synthetic data needs a positive image count, e.g. synthetic:2048; got 'synthetic:{count}'")
    method = SynthesisSpec.method
    numbers: dict[str, int] = {}
    for item in options.split("&") if options else []:
        key, _, value = item.partition("=")
        name = _SYNTH_OPTIONS.get(key.lower())
        if name is None:
            raise DataError(f"unknown data option {key!r}; synthetic data takes {', '.join(_SYNTH_OPTIONS)}")
        if name == "method":
            method = value.lower()
        elif value.isdigit():
            numbers[name] = int(value)
        else:
            raise DataError(f"synthetic data: {key} must be an integer, got {value!r}")
    return SynthesisSpec(n=int(count), method=method, **numbers)


def _parse_download(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise DataError(f"download must be 1 or 0, got {value!r}")


def parse_size(value: str) -> tuple[int, int]:
    """``"32"`` or ``"32x24"`` (also ``×``) -> ``(H, W)`` in pixels; a one-line :class:`DataError` otherwise."""
    m = _SIZE_RE.match(value)
    if not m or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
        raise DataError(f"size must be H or HxW with positive integers, got {value!r}")
    h = int(m.group(1))
    return (h, int(m.group(2)) if m.group(2) is not None else h)
