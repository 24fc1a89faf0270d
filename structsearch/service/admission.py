"""Checking a study spec from an untrusted client, before anything is stored or built.

:func:`parse_study_spec` already validates the structure. A spec from the network can also ask
the machine to read files or fetch weights, so on top of that:

* every file path (teacher checkpoint, ``npz:``/``imagefolder:``/``torchvision:`` data) must be
  absolute and resolve (symlinks and ``..`` followed) inside one of the configured data roots;
* torchvision ``?download=1`` is refused (a worker would fetch from the internet);
* model kwargs may not name files or downloads (``pretrained``, ``checkpoint_path``, ...) and
  may only hold plain values, not nested configs that could smuggle either;
* ``trials`` is capped (one queued job per trial).

The heavier check, :func:`structsearch.search.context.plan_search` (unknown model, impossible
budget), runs after this one, so it never touches a path that was not allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structsearch.data import DataSpec
from structsearch.errors import AdmissionError
from structsearch.search.spec import StudySpec, parse_study_spec

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


def admit_spec(
    data: Any, data_roots: Sequence[Path], max_trials: int, max_synthesis_work: int | None = None
) -> StudySpec:
    """Validate ``data`` into a spec this service may run; raise a one-line error otherwise.

    ``max_synthesis_work`` caps a data-free set's images x iterations (``None``: no cap).
    """
    spec = parse_study_spec(data, "study spec")
    if spec.trials > max_trials:
        raise AdmissionError(f"trials: at most {max_trials} per search on this service, got {spec.trials}")
    synthesis = DataSpec.parse(spec.data.train).synthesis
    if (
        synthesis is not None
        and max_synthesis_work is not None
        and synthesis.n * synthesis.iterations > max_synthesis_work
    ):
        raise AdmissionError(
            f"data.train: {synthesis.n} synthetic images x {synthesis.iterations} iterations exceeds this service's "
            f"limit of {max_synthesis_work} images x iterations; ask for fewer images or iterations"
        )
    _check_kwargs(spec.teacher.kwargs, "teacher.kwargs")
    _check_kwargs(spec.student.kwargs, "student.kwargs")
    for field, path in spec_paths(spec):
        check_inside_roots(path, field, data_roots)
    return spec


def spec_paths(spec: StudySpec) -> list[tuple[str, str]]:
    """``(field, path)`` for every file or directory the spec would read."""
    out: list[tuple[str, str]] = []
    if spec.teacher.checkpoint:
        out.append(("teacher.checkpoint", spec.teacher.checkpoint))
    for field, text in (("data.train", spec.data.train), ("data.val", spec.data.val)):
        if not text:
            continue
        ds = DataSpec.parse(text)
        if ds.download:
            raise AdmissionError(
                f"{field}: downloads are not allowed through the service; put the data under a data root"
            )
        if ds.path:
            out.append((field, ds.path))
    return out


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


def _check_kwargs(kwargs: dict[str, Any], field: str) -> None:
    bad = sorted(FORBIDDEN_KWARGS & set(kwargs))
    if bad:
        raise AdmissionError(
            f"{field}: {', '.join(bad)} cannot be set through the service (files and downloads are not allowed)"
        )
    for key, value in kwargs.items():
        if not _plain(value):
            raise AdmissionError(f"{field}.{key}: only numbers, strings, booleans and lists of them are allowed")


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
    return False
