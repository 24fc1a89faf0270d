"""Data-free detection: ``data.train: synthetic:N?...`` in a detection study.

A detector's backbone keeps the BatchNorm running statistics of the images it was trained on, as a
classifier does, so the canvases are made by classification's inversion loop
(:func:`structsearch.distill.synthesis.synthesize_with`: DeepInversion's BatchNorm-statistics term
on the backbone, jitter, flips, the TV prior, Adam, quantisation to uint8, the on-disk cache), at
the study's input size. Two things differ, both in the :class:`TeacherObjective` made here:

* **The term on the teacher's output** (weighted by ``SynthesisConfig.ce_weight``). Every canvas
  gets a target class (balanced over the classes, as for classifiers), and the teacher's detection
  score for that class at its most confident location -- FCOS' ``sqrt(sigmoid(class logit) x
  sigmoid(centerness))``, the score :meth:`~structsearch.models.detector.Detector.detect`
  thresholds -- is pushed up (its ``-log``, averaged over the batch). Statistics alone give
  canvases on which a detector trained on sparse objects rarely fires; this term puts at least one
  object the teacher sees on each. It is DIODE's idea (Chawla et al., "Data-free Knowledge
  Distillation for Object Detection", WACV 2021) with the box left to the teacher instead of sampled.
* **The labels are pseudo-boxes**: the teacher's own detections on the quantised canvas (its box
  decoding, top-k and NMS, :meth:`Detector.detect`) scoring at least :data:`PSEUDO_BOX_SCORE`, with
  positive area. The set is a :class:`DetectionData` like a ``mosaic:`` or ``coco:`` set (boxes,
  labels, no crowd boxes), so the proxy's ground-truth term (``alpha < 1``) trains on them.

A canvas on which the teacher detects nothing that confident is **kept, with no boxes**: the
proxy's KD term distils the teacher's dense head outputs on it (cached per image like any training
image), and to the ground-truth term it is background.

Validation stays on real images: a detection study with synthetic ``data.train`` needs a real
``data.val`` (:func:`structsearch.search.datafree.check_synthetic`), since mAP against the
teacher's own pseudo-boxes would score agreement with the teacher, not detection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Unpack

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from structsearch.data import Preprocess
from structsearch.data.spec import SynthesisSpec
from structsearch.detection.data import DetectionData
from structsearch.devices import resolve_device
from structsearch.distill.synthesis import SynthesisOptions, SynthesisResult, TeacherObjective, synthesize_with
from structsearch.models.detector import Detector

#: A teacher detection scoring at least this (FCOS' score, of 1) is a pseudo-box.
PSEUDO_BOX_SCORE = 0.3
#: Version of what a cached synthetic detection set means beyond the images; bump it when the labels change.
PSEUDO_BOX_FORMAT = 1


def detection_confidence_loss(teacher: Detector, out: Tensor, targets: Tensor) -> Tensor:
    """``-log`` of the teacher's best detection score for each image's target class, batch mean.

    ``out`` is the teacher's :meth:`~Detector.forward` on the batch; the score of a location is
    ``sqrt(sigmoid(class logit) * sigmoid(centerness))``, as FCOS' post-processing computes it.
    """
    cls, _, ctr = teacher.split(out)
    target = cls.gather(-1, targets.view(-1, 1, 1).expand(-1, cls.shape[1], 1)).squeeze(-1)  # N×L
    log_score = 0.5 * (F.logsigmoid(target) + F.logsigmoid(ctr.squeeze(-1)))
    return -log_score.amax(1).mean()


def pseudo_boxes(
    teacher: Detector,
    x: Tensor,
    preprocess: Preprocess,
    device: torch.device,
    score: float = PSEUDO_BOX_SCORE,
    batch_size: int = 64,
) -> list[dict[str, Tensor]]:
    """Per uint8 image of ``x``: the teacher's detections scoring at least ``score`` with positive
    area, as CPU ``boxes`` (float32 K×4, xyxy pixels) and ``labels`` (int64 K); possibly none."""
    teacher.to(device).eval()
    found = []
    with torch.inference_mode():
        for chunk in x.split(batch_size):
            for det in teacher.detect(preprocess(chunk.to(device))):
                boxes = det["boxes"].float().cpu()
                keep = (det["scores"].cpu() >= score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                found.append({"boxes": boxes[keep], "labels": det["labels"].cpu()[keep].to(torch.int64)})
    return found


def synthesize_detection(
    teacher: Detector,
    preprocess: Preprocess,
    spec: SynthesisSpec,
    *,
    device: str | torch.device = "auto",
    **options: Unpack[SynthesisOptions],
) -> SynthesisResult[DetectionData]:
    """``spec.n`` canvases at ``preprocess.input_size`` with the teacher's pseudo-boxes (see the
    module docstring); ``target_agreement`` is the fraction with a pseudo-box of its target class.

    The arguments are :func:`~structsearch.distill.synthesis.synthesize_spec`'s; the same cache
    holds the set (with its boxes), so a resumed search reads it back instead of optimising.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    num_classes = teacher.num_classes
    fcos = teacher.fcos
    objective = TeacherObjective(
        "confidence",
        lambda out, targets: detection_confidence_loss(teacher, out, targets),
        lambda images: _flatten(pseudo_boxes(teacher, images, preprocess, dev)),
        _agreement,
        key={
            "what": "synthetic-detection-images",
            "labels": {
                "format": PSEUDO_BOX_FORMAT,
                "score": PSEUDO_BOX_SCORE,
                # detect()'s settings are constructor arguments, not weights: a state digest misses them
                "detect": [fcos.score_thresh, fcos.nms_thresh, fcos.detections_per_img, fcos.topk_candidates],
            },
        },
    )

    def data(arrays: Mapping[str, np.ndarray], source: str) -> DetectionData:
        boxes, labels = _unflatten(arrays)
        crowd = tuple(torch.zeros(len(b), dtype=torch.bool) for b in boxes)
        x = torch.from_numpy(np.array(arrays["x"], dtype=np.uint8))
        names = tuple(str(i) for i in range(num_classes))
        return DetectionData(x, boxes, labels, crowd, num_classes, names, source)

    return synthesize_with(teacher, preprocess, spec, objective, data, num_classes, device=dev, **options)


def _flatten(found: list[dict[str, Tensor]]) -> dict[str, np.ndarray]:
    """Per-image boxes as cacheable arrays: every box in image order, and each image's count."""
    return {
        "box_counts": np.array([len(f["labels"]) for f in found], dtype=np.int64),
        "boxes": torch.cat([f["boxes"] for f in found]).reshape(-1, 4).numpy().astype(np.float32),
        "box_labels": torch.cat([f["labels"] for f in found]).numpy().astype(np.int64),
    }


def _unflatten(arrays: Mapping[str, np.ndarray]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    counts = [int(c) for c in arrays["box_counts"]]
    boxes = torch.from_numpy(np.array(arrays["boxes"], dtype=np.float32)).reshape(-1, 4).split(counts)
    labels = torch.from_numpy(np.array(arrays["box_labels"], dtype=np.int64)).split(counts)
    return tuple(b.clone() for b in boxes), tuple(y.clone() for y in labels)


def _agreement(arrays: Mapping[str, np.ndarray], targets: Tensor) -> float:
    """The fraction of canvases with a pseudo-box of their target class."""
    _, labels = _unflatten(arrays)
    hits = [bool((y == int(t)).any()) for y, t in zip(labels, targets)]
    return float(np.mean(hits)) if hits else 0.0
