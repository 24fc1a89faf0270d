"""The search context of a detection study (``task: detection``): its data, teacher and proxy.

:func:`~structsearch.search.context.build_context` builds a detection study's context from
:func:`build_detection_scorer`; everything else about the search -- proposals, costs, budgets,
baselines, the objective, records and fronts -- is the classification search's own, because the
detector's backbone is searched through the ``detector`` family adapter and the proxy returns a
result with the same fields (its ``val_top1`` is mAP@[.5:.95] in percent, ``map50`` beside it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from structsearch.data import Preprocess
from structsearch.detection import DetectionData, DetectionSource, load_detection_data, split_rows
from structsearch.errors import DataError, StructsearchError
from structsearch.models import create_model, file_hash
from structsearch.models.detector import Detector

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.spec import StudySpec


def check_detection_spec(spec: StudySpec, teacher: Any) -> None:
    """The cheap checks of a detection study (``plan_search``): source syntax, a detector teacher."""
    DetectionSource.parse(spec.data.train)
    if spec.data.val:
        DetectionSource.parse(spec.data.val)
    if not isinstance(teacher, Detector):
        raise StructsearchError(
            f"a detection study needs a detector teacher (model: fcos_detector with a backbone), got {spec.teacher.model}"
        )
    if spec.student.model is not None:
        raise StructsearchError("detection students inherit the teacher's weights: leave student.model out")


def _rows(data: DetectionData, size: int | None) -> torch.Tensor:
    return torch.arange(len(data) if size is None else min(size, len(data)))


def build_detection_scorer(plan: Any) -> tuple[nn.Module, Any, float]:
    """``(teacher, proxy, teacher mAP)`` of a planned detection search (a ``SearchPlan``): the data
    loaded, the teacher loaded or trained (once, cached), the cached KD proxy prepared."""
    from structsearch.detection.proxy import DetectionDistiller
    from structsearch.detection.teacher import fit_detector
    from structsearch.distill import ProxyConfig, TeacherCache, TeacherId
    from structsearch.distill.teacher import state_digest
    from structsearch.distill.trainer import default_lr
    from structsearch.paths import home
    from structsearch.teachers import trained_teacher

    spec, t = plan.spec, plan.spec.teacher
    train = load_detection_data(spec.data.train)  # every data check before any compute
    if spec.data.val:
        val = load_detection_data(spec.data.val)
        train_idx, val_idx = _rows(train, spec.data.train_size), _rows(val, None)
    else:
        val = train
        train_idx, val_idx = split_rows(len(train), spec.data.val_size, spec.seed)
        train_idx = train_idx[: spec.data.train_size]
    teacher: nn.Module = create_model(t.model, checkpoint=t.checkpoint, seed=spec.seed, **t.kwargs).eval()
    size = tuple(plan.input_size[1:])
    for d in (train, val):
        if d.image_size != size:
            raise DataError(
                f"{d.source}: images are {d.image_size[0]}x{d.image_size[1]} but the detector runs at "
                f"{size[0]}x{size[1]} px (boxes are in image pixels): make the data that size"
            )
        if d.num_classes > getattr(teacher, "num_classes", 0):
            raise DataError(f"{d.source} has {d.num_classes} classes but the detector has {teacher.num_classes}")
    preprocess = Preprocess.from_model(teacher, size)
    if t.checkpoint:
        teacher_id = TeacherId.of(t.model, t.kwargs, t.checkpoint).to_dict()
    elif t.train_epochs:
        teacher, path = trained_teacher(
            t.model,
            t.kwargs,
            train,
            train.fingerprint,
            train_idx,
            preprocess,
            t.train_epochs,
            spec.seed,
            home() / "teachers",
            fit=fit_detector,
        )
        teacher_id = TeacherId(t.model, tuple(sorted(t.kwargs.items())), file_hash(path)).to_dict()
    else:
        teacher_id = {"state": state_digest(teacher)}
    p = spec.proxy
    config = ProxyConfig(
        **p.model_dump(exclude={"lr"}),
        lr=p.lr if p.lr is not None else default_lr(True),
        seed=spec.seed,
        report_every=max(1, p.steps // 5),
    )
    assert isinstance(teacher, Detector)  # check_detection_spec made sure
    distiller = DetectionDistiller(
        teacher.eval(), train, train_idx, val, val_idx, preprocess, config, teacher_id=teacher_id, cache=TeacherCache()
    )
    return teacher, distiller, distiller.evaluate(teacher)[0]
