"""The short distillation proxy of a detection study, and its score: mAP on the validation split.

:class:`DetectionDistiller` mirrors the classification :class:`~structsearch.distill.Distiller`
(same :class:`~structsearch.distill.ProxyConfig`, same step loop, optimiser, schedule and BatchNorm
recalibration) with detection's targets: the teacher's raw head outputs on every training image
(and, with ``feature_kd``, its FPN levels) are computed once and kept in the on-disk
:class:`~structsearch.distill.TeacherCache` under a key of everything that determines them, so a
search's candidates only pay for their own forward and backward passes.

The loss is ``alpha * KD + (1 - alpha) * FCOS ground-truth loss`` (+ ``feature_weight`` x FPN
imitation), see :mod:`structsearch.detection.losses`. Training images are not augmented (the
teacher outputs are cached per image; the mosaic set is random already).

The score is COCO mAP@[.5:.95] in percent (``val_top1``, what the study maximises) with mAP@.5
beside it, computed by torchmetrics' ``MeanAveragePrecision`` (pycocotools backend) on the
post-processed detections of :meth:`~structsearch.models.detector.Detector.detect`; crowd boxes
are passed with their flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from structsearch.data import Preprocess, batch_stream
from structsearch.detection.data import DetectionData
from structsearch.detection.losses import detection_kd_loss, fpn_imitation_loss
from structsearch.devices import resolve_device
from structsearch.distill import ProxyConfig, TeacherCache
from structsearch.distill.cache import cache_key
from structsearch.distill.teacher import tensor_digest
from structsearch.distill.trainer import run_proxy
from structsearch.errors import ProxyConfigError
from structsearch.models.detector import Detector
from structsearch.train import recalibrate_bn, seeded

#: Version of what the cached detection teacher outputs mean; bump it when their computation changes.
CACHE_FORMAT = 1
#: Teacher class probability above which its boxes are distilled (see ``detection.losses``).
CONFIDENCE = 0.3


@dataclass(frozen=True)
class DetectionResult:
    """The score of one detection candidate; ``val_top1`` is mAP@[.5:.95] in percent (the study's score)."""

    val_top1: float
    map50: float
    steps: int
    seconds: float
    final_loss: float
    history: tuple[tuple[int, float], ...] = field(default=())
    teacher_cache_hit: bool | None = None
    #: Classification's top-1 agreement has no detection counterpart here.
    teacher_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ap(model: Detector, x: Tensor, targets: list[dict[str, Tensor]], batch_size: int = 64) -> tuple[float, float]:
    """``(mAP@[.5:.95], mAP@.5)`` in percent of ``model``'s detections on preprocessed ``x``."""
    from torchmetrics.detection import MeanAveragePrecision  # deferred: imports pycocotools

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(x), batch_size):
            preds = model.detect(x[begin : begin + batch_size])
            metric.update([{k: v.cpu() for k, v in p.items()} for p in preds], targets[begin : begin + batch_size])
    result = metric.compute()
    return 100.0 * max(0.0, float(result["map"])), 100.0 * max(0.0, float(result["map_50"]))


class DetectionDistiller:
    """Everything a detection search's proxy runs share; call :meth:`score` once per candidate."""

    def __init__(
        self,
        teacher: Detector,
        train: DetectionData,
        train_idx: Tensor,
        val: DetectionData,
        val_idx: Tensor,
        preprocess: Preprocess,
        config: ProxyConfig,
        *,
        teacher_id: dict[str, Any],
        cache: TeacherCache | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.preprocess = preprocess
        self.teacher = teacher.eval().to(self.device)
        self.train_idx = train_idx
        self.x_train = train.x[train_idx]
        self.train_targets = train.targets(train_idx, self.device)
        self.val_x = self._pre(val.x[val_idx])
        self.val_targets = val.targets(val_idx, crowd=True)
        key = {
            "format": CACHE_FORMAT,
            "what": "detection-teacher-train-outputs",
            "teacher": teacher_id,
            "preprocess": asdict(preprocess),
            "data": train.fingerprint,
            "train_idx": tensor_digest(train_idx),
            "features": config.feature_kd,
        }
        self.cache_hit: bool | None = None
        if cache is None:
            arrays = self._teacher_outputs()
        else:
            arrays, self.cache_hit = cache.get_or_compute(cache_key(key), self._teacher_outputs, key)
        # kept as the cache hands them out (read-only, memory-mapped): each step gathers its batch
        self.t_head = [arrays[k] for k in ("cls", "box", "ctr")]
        self.t_feats = [arrays[k] for k in sorted(arrays) if k.startswith("feat")]

    def _teacher_rows(self, arrays: list[np.ndarray], rows: Tensor) -> list[Tensor]:
        """These rows of cached teacher outputs, on the device (indexing copies just the batch)."""
        idx = rows.cpu().numpy()
        return [torch.from_numpy(a[idx]).to(self.device) for a in arrays]

    def _pre(self, x_uint8: Tensor) -> Tensor:
        return self.preprocess(x_uint8.to(self.device))

    def _teacher_outputs(self) -> dict[str, np.ndarray]:
        """Head outputs (and FPN levels with feature KD) on every training image, as float16."""
        parts: dict[str, list[np.ndarray]] = {}
        with torch.inference_mode():
            for chunk in self.x_train.split(self.config.eval_batch_size):
                feats = self.teacher.features(self._pre(chunk))
                named = dict(zip(("cls", "box", "ctr"), self.teacher.head_outputs(feats)))
                if self.config.feature_kd:
                    named |= {f"feat{i}": f for i, f in enumerate(feats)}
                for k, v in named.items():
                    parts.setdefault(k, []).append(v.half().cpu().numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self,
        student: nn.Module,
        callback: Callable[[int, float], None] | None = None,
        *,
        input_size: int | None = None,
        check: Callable[[], None] | None = None,
        on_loss: Callable[[int, float], None] | None = None,
    ) -> DetectionResult:
        """Distil into ``student`` (in place, left in eval mode) and score it by validation mAP.

        ``callback(step, mAP)`` evaluates every ``report_every`` steps (a search's pruning);
        ``on_loss(step, loss)`` is told every step's training loss (a fine-tune's progress bar).
        """
        if input_size is not None and (input_size, input_size) != tuple(self.preprocess.input_size):
            raise ProxyConfigError("detection students run at the teacher's input size (no data.resolutions)")
        assert isinstance(student, Detector)
        with seeded(self.config.seed, self.device):
            cfg = self.config
            start = time.perf_counter()
            student.to(self.device)
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            recalibrate_bn(
                student, (self._pre(self.x_train[i]) for i in self._batches(gen, cfg.bn_recalibration_batches))
            )

            def loss_fn(rows: Tensor) -> tuple[Tensor, None]:
                x = self._pre(self.x_train[rows])
                feats = student.features(x)
                teacher = tuple(self._teacher_rows(self.t_head, rows))
                loss = cfg.alpha * detection_kd_loss(student.head_outputs(feats), teacher, cfg.temperature, CONFIDENCE)  # type: ignore[arg-type]
                if cfg.alpha < 1:
                    targets = [self.train_targets[int(r)] for r in rows]
                    loss = loss + (1 - cfg.alpha) * student.loss(x, targets, feats)
                if self.t_feats:
                    loss = loss + cfg.feature_weight * fpn_imitation_loss(feats, self._teacher_rows(self.t_feats, rows))
                return loss, None

            params = (p for p in student.parameters() if p.requires_grad)
            batches, evaluate = self._batches(gen, cfg.steps), lambda: self.evaluate(student)[0]
            run = run_proxy(student, params, cfg, batches, loss_fn, evaluate, callback, check, on_loss)
            m, m50 = self.evaluate(student)
            return DetectionResult(
                val_top1=m,
                map50=m50,
                steps=cfg.steps,
                seconds=time.perf_counter() - start,
                final_loss=run.final_loss,
                history=run.history,
                teacher_cache_hit=self.cache_hit,
            )

    def evaluate(self, model: nn.Module, *, input_size: int | None = None) -> tuple[float, float]:
        """``(mAP@[.5:.95], mAP@.5)`` in percent on the validation split (model left in eval mode)."""
        assert isinstance(model, Detector)
        return mean_ap(model.to(self.device), self.val_x, self.val_targets, self.config.eval_batch_size)

    def _batches(self, gen: torch.Generator, count: int) -> Iterator[Tensor]:
        """``count`` batches of training rows (positions in ``train_idx``), epoch after epoch."""
        n = len(self.train_idx)
        return batch_stream(n, min(self.config.batch_size, n), gen, count)
