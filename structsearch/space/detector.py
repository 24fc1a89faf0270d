"""Adapter for detectors (``fcos_detector``): the backbone is searched exactly as its classifier is.

The detector's space is its body's space, found through the body's own family adapter, with block
names prefixed by the body's path inside the detector (``fcos.backbone.body.layer1.0``), because
cost calibration reads MACs per module by those names. Shrinking delegates to the same adapter on
the body, so students of a detector inherit weights, keep recipes and honour the identity contract
like classifiers do; the FPN and head are kept whole (their input widths are the stage outputs,
which every family leaves unchanged).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from structsearch.models.detector import Detector
from structsearch.pruning.importance import Importance
from structsearch.space.base import BlockChoices, Family
from structsearch.space.registry import family_for, register_family
from structsearch.space.spec import ArchSpec

#: Where the body sits inside a :class:`Detector` (module path prefix of its blocks).
BODY = "fcos.backbone.body."


@register_family
class DetectorFamily(Family):
    name = "detector"
    description = "FCOS detectors over a CNN family backbone: the backbone's depth and widths"
    examples = ("fcos_detector",)
    kinds = (Detector,)

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        assert isinstance(model, Detector)
        inner = family_for(model.body).describe(model.body)
        return tuple(tuple(replace(c, name=BODY + c.name) for c in stage) for stage in inner)

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        assert isinstance(model, Detector)
        family = family_for(model.body)
        return {"backbone_family": family.name, **family.shrink(model.body, spec, importance)}
