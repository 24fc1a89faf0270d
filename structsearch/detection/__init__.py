"""Detection studies: detection data, distillation on detection outputs, mAP scoring, detection teachers.

A detection study (``task: detection`` in its spec) searches the backbone of an ``fcos_detector``
(:mod:`structsearch.models.detector`) block-wise, exactly as a classifier is searched (the
``detector`` family adapter, :mod:`structsearch.space.detector`); what differs is here:

* :mod:`~structsearch.detection.source` -- parsing ``coco:``/``mosaic:``/``synthetic:`` strings (no torch);
* :mod:`~structsearch.detection.data` -- loading them as :class:`DetectionData`;
* :mod:`~structsearch.detection.losses` -- KD on the head outputs (and optionally FPN features);
* :mod:`~structsearch.detection.proxy` -- the cached-teacher proxy and its mAP score;
* :mod:`~structsearch.detection.teacher` -- training a detection teacher when a spec has no checkpoint;
* :mod:`~structsearch.detection.synthetic` -- ``synthetic:`` training canvases with the teacher's pseudo-boxes;
* :mod:`~structsearch.detection.context` -- the search context a detection study runs with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structsearch.detection.source import DetectionSource
from structsearch.lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.detection.data import DetectionData, load_detection_data

#: Loading imports torch; validating a spec's sources (the API's admission) must not.
__getattr__ = lazy_attributes(__name__, {"DetectionData": "data", "load_detection_data": "data"})

__all__ = ["DetectionData", "DetectionSource", "load_detection_data"]
