"""Searching without data: ``data.train: synthetic:N?...`` in a study spec.

The training images are synthesised from the teacher (:mod:`structsearch.distill.synthesis`:
DeepInversion for BatchNorm teachers, PSAQ-ViT for ViTs) and cached on disk beside the teacher
outputs, so only the first search with a given teacher and synthesis settings pays for them.

Validation: without ``data.val`` it is carved from the synthetic set like from any training set
(``data.val_size``, stratified by label). The labels of synthetic images are the teacher's own
predictions, so a candidate's score is then its top-1 *agreement with the teacher on held-out
synthetic images*, and the teacher itself scores 100 %. A real ``data.val`` (e.g. a small labelled
set) may still be given; the candidates are then scored on it as usual.

Detection studies (``task: detection``) synthesise canvases labelled with the teacher's confident
boxes (:mod:`structsearch.detection.synthetic`); their validation is never carved from them.

The rules, checked by :func:`check_synthetic` in ``plan_search`` before anything is stored:

* the teacher needs a checkpoint: synthesis inverts *trained* weights, and ``teacher.train_epochs``
  would need real data to train on;
* ``data.val`` cannot itself be synthetic (leave it out to carve validation from the set);
* a detection study needs a real ``data.val``: mAP against the teacher's own pseudo-boxes would
  score agreement with the teacher, not detection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from structsearch.data import DataSpec, LoadedData, Preprocess
from structsearch.data.spec import SynthesisSpec
from structsearch.detection import DetectionSource
from structsearch.errors import DataError

if TYPE_CHECKING:
    from structsearch.search.spec import StudySpec


def check_synthetic(spec: StudySpec, teacher: nn.Module) -> None:
    """Raise a one-line DataError if the spec's synthetic data cannot be made for this teacher.

    ``teacher`` may have random weights: only its layers are looked at (which method applies).
    """
    from structsearch.distill.synthesis import resolve_method

    detection = spec.task == "detection"
    if spec.data.val and _synthesis(spec.data.val, spec.task) is not None:
        instead = (
            "give real data (coco: or mosaic:) to score mAP on"
            if detection
            else "leave data.val out to carve validation from the synthetic data.train"
        )
        raise DataError(f"data.val cannot be synthetic; {instead}")
    synthesis = _synthesis(spec.data.train, spec.task)
    if synthesis is None:
        return
    if detection and not spec.data.val:
        raise DataError(
            f"data.train {spec.data.train} needs a real data.val (coco: or mosaic:) in a detection study: "
            "mAP on the teacher's own pseudo-boxes would score agreement with the teacher, not detection"
        )
    t = spec.teacher
    if not t.checkpoint:
        why = (
            f"teacher.train_epochs={t.train_epochs} would need real data to train on"
            if t.train_epochs
            else "a teacher without a checkpoint has random weights"
        )
        raise DataError(
            f"data.train {spec.data.train} is synthesised from the teacher's trained weights, so the teacher needs a checkpoint ({why})"
        )
    resolve_method(teacher, synthesis.method, t.model)


def _synthesis(text: str, task: str) -> SynthesisSpec | None:
    """How the data source ``text`` is synthesised (``None``: it is loaded), in ``task``'s grammar."""
    return (DetectionSource.parse(text) if task == "detection" else DataSpec.parse(text)).synthesis


def load_train_data(spec: StudySpec, teacher: nn.Module, preprocess: Preprocess) -> LoadedData:
    """``data.train`` of a spec: loaded from files, or synthesised from ``teacher`` (cached on disk)."""
    from structsearch.data import load_data
    from structsearch.distill.synthesis import synthesize_spec

    train = DataSpec.parse(spec.data.train)
    if train.synthesis is None:
        return load_data(train)
    return synthesize_spec(teacher, preprocess, train.synthesis, **synthesis_options(spec)).data


def synthesis_options(spec: StudySpec) -> dict[str, Any]:
    """Where a study's synthetic set is made and cached (classification and detection alike):
    the proxy's device and precision (``proxy.precision: bf16`` inverts under bfloat16 autocast
    too), and the on-disk cache keyed by the teacher."""
    from structsearch.distill import TeacherCache, TeacherId
    from structsearch.distill.synthesis import SynthesisConfig

    t = spec.teacher
    return {
        "device": spec.proxy.device,
        "teacher_id": TeacherId.of(t.model, t.kwargs, t.checkpoint),
        "cache": TeacherCache(),
        "config": SynthesisConfig(precision=spec.proxy.precision),
    }
