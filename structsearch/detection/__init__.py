"""Detection studies: detection data, distillation on detection outputs, mAP scoring, detection teachers.

A detection study (``task: detection`` in its spec) searches the backbone of an ``fcos_detector``
(:mod:`structsearch.models.detector`) block-wise, exactly as a classifier is searched (the
``detector`` family adapter, :mod:`structsearch.space.detector`); what differs is here:

* :mod:`~structsearch.detection.data` -- ``coco:`` and ``mosaic:`` sources as :class:`DetectionData`;
* :mod:`~structsearch.detection.losses` -- KD on the head outputs (and optionally FPN features);
* :mod:`~structsearch.detection.proxy` -- the cached-teacher proxy and its mAP score;
* :mod:`~structsearch.detection.teacher` -- training a detection teacher when a spec has no checkpoint;
* :mod:`~structsearch.detection.synthetic` -- ``synthetic:`` training canvases with the teacher's pseudo-boxes;
* :mod:`~structsearch.detection.context` -- the search context a detection study runs with.
"""

from structsearch.detection.data import DetectionData, DetectionSource, load_detection_data

__all__ = ["DetectionData", "DetectionSource", "load_detection_data"]
