"""The search context of a detection study (``task: detection``): its data, teacher and proxy.

:func:`~structsearch.search.context.build_context` builds a detection study's context from
:func:`build_detection_scorer`; everything else about the search -- proposals, costs, budgets,
baselines, the objective, records and fronts -- is the classification search's own, because the
detector's backbone is searched through the ``detector`` family adapter and the proxy returns a
result with the same fields (its ``val_top1`` is mAP@[.5:.95] in percent, ``map50`` beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from structsearch.data import Preprocess, split_train_val
from structsearch.detection import DetectionData, DetectionSource, load_detection_data
from structsearch.errors import DataError, StructsearchError
from structsearch.models import create_model
from structsearch.models.detector import Detector

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.spec import StudySpec


def check_detection_spec(spec: StudySpec, teacher: Any) -> None:
    """The cheap checks of a detection study (``plan_search``): source syntax, a detector teacher
    (synthetic data's own rules: :func:`~structsearch.search.datafree.check_synthetic`)."""
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


@dataclass(frozen=True)
class DetectionStudy:
    """A detection study's teacher and data, loaded exactly as its search loads them.

    Shared by the search (:func:`build_detection_scorer`), ``recheck`` (through the search's
    context) and ``finetune`` (:mod:`structsearch.finetune.detection`), so all of them train on the
    same rows, hold out the same validation images and distil the same (cached) teacher outputs.
    """

    teacher: Detector
    #: The teacher's identity in the teacher-output cache key.
    teacher_id: dict[str, Any]
    preprocess: Preprocess
    train: DetectionData
    train_idx: torch.Tensor
    val: DetectionData
    val_idx: torch.Tensor

    def distiller(self, config: Any) -> Any:
        """The cached-teacher KD proxy (a ``DetectionDistiller``) on this data, with ``config``'s settings."""
        from structsearch.detection.proxy import DetectionDistiller
        from structsearch.distill import TeacherCache

        return DetectionDistiller(
            self.teacher,
            self.train,
            self.train_idx,
            self.val,
            self.val_idx,
            self.preprocess,
            config,
            teacher_id=self.teacher_id,
            cache=TeacherCache(),
        )


def load_detection_study(plan: Any) -> DetectionStudy:
    """Load the data and load (or train once, cached) the teacher of a planned detection search.

    A ``synthetic:`` ``data.train`` is synthesised from the teacher (its checkpoint) once its real
    ``data.val`` has been loaded and checked, and read back from the cache after the first time.
    """
    from structsearch.detection.synthetic import synthesize_detection
    from structsearch.detection.teacher import fit_detector
    from structsearch.distill.teacher import state_digest
    from structsearch.search.datafree import synthesis_options
    from structsearch.teachers import study_teacher

    spec, t = plan.spec, plan.spec.teacher
    synthesis = DetectionSource.parse(spec.data.train).synthesis
    # every data check before any compute (synthetic data is compute: made below)
    loaded = None if synthesis else load_detection_data(spec.data.train)
    val = load_detection_data(spec.data.val) if spec.data.val else None
    teacher: nn.Module = create_model(t.model, checkpoint=t.checkpoint, seed=spec.seed, **t.kwargs).eval()
    size = tuple(plan.input_size[1:])
    for d in (loaded, val):
        if d is None:
            continue
        if d.image_size != size:
            raise DataError(
                f"{d.source}: images are {d.image_size[0]}x{d.image_size[1]} but the detector runs at "
                f"{size[0]}x{size[1]} px (boxes are in image pixels): make the data that size"
            )
        if d.num_classes > getattr(teacher, "num_classes", 0):
            raise DataError(f"{d.source} has {d.num_classes} classes but the detector has {teacher.num_classes}")
    preprocess = Preprocess.from_model(teacher, size)
    if synthesis is not None:  # check_synthetic: the teacher has a checkpoint, a real data.val is given
        assert isinstance(teacher, Detector)
        loaded = synthesize_detection(teacher, preprocess, synthesis, **synthesis_options(spec)).data
    assert loaded is not None
    train = loaded  # not Optional, for the closure below
    if val is not None:
        train_idx, val_idx = _rows(train, spec.data.train_size), _rows(val, None)
    else:
        val = train
        # one class for every image: the classification split, unstratified
        train_idx, val_idx = split_train_val(torch.zeros(len(train), dtype=torch.int64), spec.data.val_size, spec.seed)
        train_idx = train_idx[: spec.data.train_size]
    teacher, tid = study_teacher(
        t, spec.seed, teacher, train, lambda: train.fingerprint, train_idx, preprocess, fit=fit_detector
    )
    teacher_id = tid.to_dict() if tid is not None else {"state": state_digest(teacher)}
    assert isinstance(teacher, Detector)  # check_detection_spec made sure
    return DetectionStudy(teacher.eval(), teacher_id, preprocess, train, train_idx, val, val_idx)


def build_detection_scorer(plan: Any) -> tuple[nn.Module, Any, float]:
    """``(teacher, proxy, teacher mAP)`` of a planned detection search (a ``SearchPlan``): the data
    loaded, the teacher loaded or trained (once, cached), the cached KD proxy prepared."""
    from structsearch.distill import ProxyConfig
    from structsearch.distill.trainer import default_lr

    study = load_detection_study(plan)
    p, seed = plan.spec.proxy, plan.spec.seed
    config = ProxyConfig(
        **p.model_dump(exclude={"lr"}),
        lr=p.lr if p.lr is not None else default_lr(True),
        seed=seed,
        report_every=max(1, p.steps // 5),
    )
    distiller = study.distiller(config)
    return study.teacher, distiller, distiller.evaluate(study.teacher)[0]
