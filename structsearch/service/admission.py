"""Checking a study spec from an untrusted client, before anything is stored or built.

:func:`parse_study_spec` already validates the structure. A spec from the network can also ask
the machine to read files or fetch weights, so on top of that:

* every file path (teacher checkpoint, a detector's ``backbone_checkpoint``,
  ``npz:``/``imagefolder:``/``torchvision:`` data, a detection study's ``coco:`` images and
  annotations and the object source of ``mosaic:`` data) must be absolute and resolve (symlinks and
  ``..`` followed) inside one of the configured data roots; ``digits`` and ``mosaic:digits`` read
  no file and need no root;
* torchvision ``?download=1`` is refused (a worker would fetch from the internet);
* model kwargs may not name files or downloads (``pretrained``, ``checkpoint_path``, ...) and
  may only hold plain values, not nested configs that could smuggle either;
* ``trials`` is capped (one queued job per trial);
* every setting that sizes work is capped service-wide (:class:`WorkLimits`): model kwargs are
  allow-listed and bounded, the teacher's (and student base's) parameters are counted on the
  ``meta`` device -- no memory is allocated -- before anything real is built, and ``measure``,
  ``proxy``, ``train_epochs``, image sizes, batch x image pixels, the pixels a ``mosaic:`` source
  generates in memory and devices have ceilings. A breach names the setting
  and the limit, so one request cannot ask the API or a worker for a 49 GB model or hours of
  timing.

The heavier check, :func:`structsearch.search.context.plan_search` (unknown model, impossible
budget), runs after this one, so it never touches a path that was not allowed, and it runs in a
child process with a memory and time limit (:mod:`structsearch.service.planning`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structsearch.data import DataSpec
from structsearch.detection import DetectionSource
from structsearch.errors import AdmissionError, StructsearchError
from structsearch.search.spec import StudySpec, parse_study_spec

if TYPE_CHECKING:
    from structsearch.service.settings import ServiceSettings

#: Device strings a spec may name (``resolve_device``'s spellings); anything else is refused at
#: submission instead of failing every trial on a worker.
DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d{1,2})?)$")

#: Model kwargs that load files or download weights (timm's and structsearch's create_model).
FORBIDDEN_KWARGS = frozenset(
    {
        "pretrained",
        "checkpoint",
        "checkpoint_path",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "cache_dir",
    }
)


@dataclass(frozen=True)
class WorkLimits:
    """Service-wide ceilings on what one spec may ask for (see the fields of ``ServiceSettings``)."""

    max_model_params: int = 200_000_000
    max_num_classes: int = 100_000
    max_image_side: int = 1024
    max_measure_batch: int = 64
    max_measure_repeats: int = 200
    max_measure_warmup: int = 50
    max_threads: int = os.cpu_count() or 1
    max_proxy_steps: int = 20_000
    max_proxy_batch: int = 1024
    max_train_epochs: int = 200
    max_batch_pixels: int = 1 << 26
    max_mosaic_pixels: int = 1 << 29

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> WorkLimits:
        """The service's settings of the same names (``max_threads`` stays the CPU count)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "max_threads"})


#: Objects pasted on one ``mosaic:`` canvas at most (placement work per canvas).
MAX_MOSAIC_OBJECTS = 32


@dataclass(frozen=True)
class Source:
    """What admission needs of one ``data.train``/``data.val`` source, classification or detection."""

    #: Files and folders it reads.
    paths: tuple[str, ...]
    #: ``(H, W)`` its images are made or resized to, when the source names it.
    size: tuple[int, int] | None
    download: bool
    synthesis: Any  # structsearch.data.SynthesisSpec | None
    #: A ``mosaic:`` source: the canvases it generates in memory, and objects per canvas.
    mosaic: DetectionSource | None = None

    @classmethod
    def of(cls, text: str, task: str) -> Source:
        if task != "detection":
            ds = DataSpec.parse(text)
            return cls((ds.path,) if ds.path else (), ds.size, ds.download, ds.synthesis)
        src = DetectionSource.parse(text)
        if src.kind == "coco":
            return cls((src.path, src.annotations), src.size, False, None)
        objects = DataSpec.parse(src.objects_from)
        paths = (objects.path,) if objects.path else ()
        return cls(paths, src.size, objects.download, objects.synthesis, src)


def sources(spec: StudySpec) -> list[tuple[str, Source]]:
    """``(field, source)`` of the spec's training and (when given) validation data."""
    texts = (("data.train", spec.data.train), ("data.val", spec.data.val))
    return [(field, Source.of(text, spec.task)) for field, text in texts if text]


def admit_spec(
    data: Any,
    data_roots: Sequence[Path],
    max_trials: int,
    max_synthesis_work: int | None = None,
    limits: WorkLimits | None = None,
) -> StudySpec:
    """Validate ``data`` into a spec this service may run; raise a one-line error otherwise.

    ``max_synthesis_work`` caps a data-free set's images x iterations (``None``: no cap);
    ``limits`` the rest of the work (default: :class:`WorkLimits`' defaults).
    """
    spec = parse_study_spec(data, "study spec")
    check_spec(spec, data_roots, max_trials, max_synthesis_work, limits or WorkLimits())
    return spec


def check_spec(
    spec: StudySpec,
    data_roots: Sequence[Path],
    max_trials: int,
    max_synthesis_work: int | None,
    limits: WorkLimits,
) -> None:
    """Every check of :func:`admit_spec` on a parsed spec."""
    if spec.trials > max_trials:
        raise AdmissionError(f"trials: at most {max_trials} per search on this service, got {spec.trials}")
    synthesis = Source.of(spec.data.train, spec.task).synthesis
    if (
        synthesis is not None
        and max_synthesis_work is not None
        and synthesis.n * synthesis.iterations > max_synthesis_work
    ):
        raise AdmissionError(
            f"data.train: {synthesis.n} synthetic images x {synthesis.iterations} iterations exceeds this service's "
            f"limit of {max_synthesis_work} images x iterations; ask for fewer images or iterations"
        )
    _check_kwargs(spec.teacher.kwargs, "teacher.kwargs", limits)
    _check_kwargs(spec.student.kwargs, "student.kwargs", limits)
    check_work(spec, limits)
    check_paths(spec, data_roots)
    check_model_sizes(spec, limits)


def recheck_stored(spec: StudySpec, settings: ServiceSettings) -> None:
    """Run the submit-time checks again on a stored spec, when a worker starts its job.

    Admission ran at submit, but much may have changed since: a data root removed, a symlink
    under one swapped to lead elsewhere (the paths are resolved again now, so a job never reads
    outside the roots), a cap lowered, or a row inserted without the API. Every check of
    :func:`admit_spec` runs again with the worker's settings; a breach is a one-line
    :class:`AdmissionError` that fails the search.
    """
    try:
        check_spec(
            spec,
            settings.data_roots,
            settings.max_trials,
            settings.max_synthesis_work,
            WorkLimits.from_settings(settings),
        )
    except AdmissionError as e:
        raise AdmissionError(f"the stored spec no longer passes this service's checks: {e}") from None


def _cap(field: str, value: int | None, limit: int, setting: str) -> None:
    if value is not None and value > limit:
        raise AdmissionError(
            f"{field}: at most {limit} on this service (setting STRUCTSEARCH_{setting.upper()}), got {value}"
        )


def check_work(spec: StudySpec, limits: WorkLimits) -> None:
    """The ``measure``, ``proxy``, ``train_epochs``, image-size and device ceilings."""
    m, p = spec.measure, spec.proxy
    _cap("measure.batch_size", m.batch_size, limits.max_measure_batch, "max_measure_batch")
    _cap("measure.repeats", m.repeats, limits.max_measure_repeats, "max_measure_repeats")
    _cap("measure.warmup", m.warmup, limits.max_measure_warmup, "max_measure_warmup")
    if m.threads is not None and m.threads > limits.max_threads:
        raise AdmissionError(
            f"measure.threads: at most {limits.max_threads} (the CPU count of this service's machine), got {m.threads}"
        )
    _cap("proxy.steps", p.steps, limits.max_proxy_steps, "max_proxy_steps")
    _cap("proxy.batch_size", p.batch_size, limits.max_proxy_batch, "max_proxy_batch")
    _cap("teacher.train_epochs", spec.teacher.train_epochs, limits.max_train_epochs, "max_train_epochs")
    for field, device in (("proxy.device", p.device), ("measure.device", m.device)):
        if not DEVICE_PATTERN.match(device):
            raise AdmissionError(f"{field}: unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    side = limits.max_image_side
    _cap("data.input_size", spec.data.input_size, side, "max_image_side")
    for r in spec.data.resolutions or ():
        _cap("data.resolutions", r, side, "max_image_side")
    for field, src in sources(spec):
        for v in src.size or ():
            _cap(f"{field} size", v, side, "max_image_side")
        if src.mosaic is not None and src.size is not None:
            if src.mosaic.objects > MAX_MOSAIC_OBJECTS:
                raise AdmissionError(
                    f"{field}: at most {MAX_MOSAIC_OBJECTS} objects per mosaic canvas, got {src.mosaic.objects}"
                )
            pixels = src.mosaic.n * src.size[0] * src.size[1]
            if pixels > limits.max_mosaic_pixels:
                raise AdmissionError(
                    f"{field}: {src.mosaic.n} canvases of {src.size[0]}x{src.size[1]} px is {pixels:,} pixels; this "
                    f"service generates at most {limits.max_mosaic_pixels:,} (setting STRUCTSEARCH_MAX_MOSAIC_PIXELS)"
                )
    check_batch_pixels(spec, limits)


def image_sizes(spec: StudySpec) -> list[tuple[int, int]]:
    """``(height, width)`` of every image size the spec names (input size, resolutions, data sizes)."""
    sides = [spec.data.input_size, *(spec.data.resolutions or ())]
    sizes = [(s, s) for s in sides if s is not None]
    return sizes + [src.size for _, src in sources(spec) if src.size]


def check_batch_pixels(spec: StudySpec, limits: WorkLimits) -> None:
    """Batch x height x width of the largest named image: the batch and side caps alone still
    allow 1024 images of 1024 x 1024 px (a 12 GB float input before any activation)."""
    sizes = image_sizes(spec)
    if not sizes:
        return  # no size named: the data's own (digits, CIFAR); an image folder's needs ?size= to be capped
    h, w = max(sizes, key=lambda hw: hw[0] * hw[1])
    for field, batch in (("proxy.batch_size", spec.proxy.batch_size), ("measure.batch_size", spec.measure.batch_size)):
        pixels = batch * h * w
        if pixels > limits.max_batch_pixels:
            raise AdmissionError(
                f"{field}: {batch} images of {h}x{w} px is {pixels:,} pixels a batch; this service allows at most "
                f"{limits.max_batch_pixels:,} (setting STRUCTSEARCH_MAX_BATCH_PIXELS); use a smaller batch or image size"
            )


def check_model_sizes(spec: StudySpec, limits: WorkLimits) -> None:
    """Refuse a teacher or student base above ``max_model_params``, counted without allocating."""
    models = [("teacher", spec.teacher.model, dict(spec.teacher.kwargs))]
    if spec.student.model:
        kwargs = dict(spec.student.kwargs)
        kwargs.setdefault("num_classes", spec.teacher.kwargs.get("num_classes", 1000))
        models.append(("student", spec.student.model, kwargs))
    for field, name, kwargs in models:
        n = meta_param_count(name, kwargs)
        if n is not None and n > limits.max_model_params:
            raise AdmissionError(
                f"{field}: {name} with these kwargs has {n:,} parameters; this service allows at most "
                f"{limits.max_model_params:,} (setting STRUCTSEARCH_MAX_MODEL_PARAMS)"
            )


def meta_param_count(name: str, kwargs: dict[str, Any]) -> int | None:
    """Parameters of ``name(**kwargs)`` built on the ``meta`` device (shapes only: no memory, ms).

    None when the constructor cannot run on ``meta`` (one that reads tensor values while it
    builds); planning, in its memory-limited child process, then finds out the real way.
    """
    import torch

    from structsearch.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
    except StructsearchError:
        raise
    except Exception:  # noqa: BLE001 - any constructor error: the planning child reports it
        return None
    return sum(p.numel() for p in model.parameters())


def spec_paths(spec: StudySpec) -> list[tuple[str, str]]:
    """``(field, path)`` for every file or directory the spec would read."""
    out: list[tuple[str, str]] = []
    if spec.teacher.checkpoint:
        out.append(("teacher.checkpoint", spec.teacher.checkpoint))
    for section, kwargs in (("teacher", spec.teacher.kwargs), ("student", spec.student.kwargs)):
        if isinstance(path := kwargs.get("backbone_checkpoint"), str):
            out.append((f"{section}.kwargs.backbone_checkpoint", path))
    for field, src in sources(spec):
        if src.download:
            raise AdmissionError(
                f"{field}: downloads are not allowed through the service; put the data under a data root"
            )
        out += [(field, path) for path in src.paths]
    return out


def check_paths(spec: StudySpec, data_roots: Sequence[Path]) -> None:
    """Every file or folder ``spec`` reads resolves (symlinks followed now) inside ``data_roots``."""
    for field, path in spec_paths(spec):
        check_inside_roots(path, field, data_roots)


def check_inside_roots(path: str, field: str, roots: Sequence[Path]) -> Path:
    """The resolved ``path`` if it lies inside one of ``roots``; else an :class:`AdmissionError`."""
    p = Path(path)
    if not p.is_absolute():
        raise AdmissionError(f"{field}: paths must be absolute, got '{path}'")
    if not roots:
        raise AdmissionError(f"{field}: this service accepts no file paths (no data roots configured); use digits data")
    resolved = p.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise AdmissionError(f"{field}: '{path}' is outside the allowed data roots ({allowed})")
    return resolved


def _int_in(low: int, high: int | str) -> Callable[[Any, WorkLimits], str | None]:
    """Integers (or a short list of them) in ``[low, high]``; ``high`` a number or the name of a
    :class:`WorkLimits` field (the message then names its setting)."""

    def check(v: Any, limits: WorkLimits) -> str | None:
        values = v if isinstance(v, (list, tuple)) and 0 < len(v) <= 8 else [v]
        top = getattr(limits, high) if isinstance(high, str) else high
        if all(isinstance(x, int) and not isinstance(x, bool) and low <= x <= top for x in values):
            return None
        setting = f" (setting STRUCTSEARCH_{high.upper()})" if isinstance(high, str) else ""
        return f"an integer (or a short list of them) from {low} to {top}{setting}"

    return check


def _float_in(low: float, high: float) -> Callable[[Any, WorkLimits], str | None]:
    def check(v: Any, limits: WorkLimits) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high
        return None if ok else f"a number from {low} to {high}"

    return check


def _flag(v: Any, limits: WorkLimits) -> str | None:
    return None if v is None or isinstance(v, bool) else "true, false or null"


def _text(v: Any, limits: WorkLimits) -> str | None:
    return None if isinstance(v, str) and 0 < len(v) <= 4096 else "a path"


def _word(v: Any, limits: WorkLimits) -> str | None:
    return None if v is None or (isinstance(v, str) and re.fullmatch(r"[a-z0-9_]{1,32}", v)) else "a short name"


#: The model kwargs a client may set, each with its bounds: the sizes a search needs (classes,
#: channels, image, patch and window size, transformer widths, depths and heads, per stage where a
#: model has stages) and regularisation rates. Anything else
#: (e.g. a ``block_fn``, a ``norm_layer`` or a file) is refused. Sizes that build a big model
#: inside these bounds are caught by the parameter count.
ALLOWED_KWARGS: dict[str, Callable[[Any, WorkLimits], str | None]] = {
    "num_classes": _int_in(1, "max_num_classes"),
    "in_chans": _int_in(1, 16),
    "img_size": _int_in(8, "max_image_side"),
    "patch_size": _int_in(1, "max_image_side"),
    "window_size": _int_in(1, "max_image_side"),  # Swin at small images: windows that fit its token map
    "window_sizes": _int_in(1, "max_image_side"),  # TinyViT's, per stage
    "embed_dim": _int_in(1, 8192),
    "embed_dims": _int_in(1, 8192),  # hierarchical models (Swin, TinyViT, EfficientFormer): per stage
    "depth": _int_in(1, 128),
    "depths": _int_in(1, 128),
    "num_heads": _int_in(1, 128),
    "reg_tokens": _int_in(0, 64),
    "mlp_ratio": _float_in(0.0, 16.0),
    **{name: _float_in(0.0, 1.0) for name in ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate")},
    **{name: _flag for name in ("qkv_bias", "class_token", "no_embed_class", "pre_norm", "fc_norm")},
    "global_pool": _word,
    "act_layer": _word,
    "stem": _word,  # cifar_vit: conv or patch
    # fcos_detector (detection studies): its backbone by name, started from a checkpoint that
    # ``check_paths`` keeps inside the data roots, and the sizes of its FPN and head
    "backbone": _word,
    "backbone_checkpoint": _text,
    "image_size": _int_in(8, "max_image_side"),
    "stages": _int_in(1, 8),
    "extra_levels": _int_in(0, 4),
    "fpn_channels": _int_in(32, 1024),
    "head_convs": _int_in(0, 8),
}


def _check_kwargs(kwargs: dict[str, Any], field: str, limits: WorkLimits) -> None:
    bad = sorted(FORBIDDEN_KWARGS & set(kwargs))
    if bad:
        raise AdmissionError(
            f"{field}: {', '.join(bad)} cannot be set through the service (files and downloads are not allowed)"
        )
    for key, value in kwargs.items():
        if not _plain(value):
            raise AdmissionError(f"{field}.{key}: only numbers, strings, booleans and lists of them are allowed")
        check = ALLOWED_KWARGS.get(key)
        if check is None:
            raise AdmissionError(
                f"{field}.{key}: not an allowed model kwarg on this service; allowed: {', '.join(sorted(ALLOWED_KWARGS))}"
            )
        wanted = check(value, limits)
        if wanted is not None:
            raise AdmissionError(f"{field}.{key}: must be {wanted} on this service, got {value!r}")


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
    return False
