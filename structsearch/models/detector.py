"""FCOS detectors whose backbone is a searchable classifier (the timm model ``fcos_detector``,
registered in :mod:`structsearch.models`, builds one from a backbone name).

Why torchvision's FCOS: it is anchor-free (one location per feature-map cell, no anchor shapes to
tune for tiny canvases), its head is a few convolutions shared across pyramid levels, and its
loss, box coding and post-processing are maintained by torchvision rather than written here.

Structure (``create_model("fcos_detector", backbone="cifar_resnet20", num_classes=10, image_size=64)``)::

    x -> backbone.body  (the timm classifier, classifier head removed; its stages are tapped)
      -> backbone.fpn   (torchvision FeaturePyramidNetwork on the last ``stages`` stage outputs,
                         plus ``extra_levels`` P6/P7-style stride-2 convolutions)
      -> head           (torchvision FCOSHead: ``head_convs`` 3x3 conv + GroupNorm per tower)

The body keeps its own module names (``backbone.body.layer1.0`` ...), so its family adapter shrinks
it exactly as it shrinks the classifier (:mod:`structsearch.space.detector`). Stage outputs are read
with forward hooks registered per call, because surgery replaces stage containers.

:meth:`Detector.forward` is the *network* only: it returns the raw head outputs (class logits, box
regression, centerness for every location, concatenated), which is what MACs/params, latency and memory are
measured on and what distillation matches. Box decoding, score thresholding, top-k and NMS
(:meth:`Detector.detect`) are post-processing and are excluded from every cost figure.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

#: Raw outputs of the head, every location of every level concatenated: ``(N, L, C)``, ``(N, L, 4)``, ``(N, L, 1)``.
HeadOutputs = tuple[Tensor, Tensor, Tensor]
HEAD_KEYS = ("cls_logits", "bbox_regression", "bbox_ctrness")


class _StrideTwoLevels(ExtraFPNBlock):
    """``count`` extra levels, each a 3x3 stride-2 convolution of the previous one (FCOS' P6/P7)."""

    def __init__(self, channels: int, count: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, 2, 1) for _ in range(count))

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        last = results[-1]
        for i, conv in enumerate(self.convs):
            last = conv(torch.relu(last) if i else last)
            results.append(last)
            names.append(f"p{len(names)}")
        return results, names


class StageFPN(nn.Module):
    """The classifier body plus an FPN over its last ``stages`` stage outputs (``out_channels`` wide)."""

    def __init__(self, body: nn.Module, stages: int, channels: int, extra_levels: int, image_size: int) -> None:
        super().__init__()
        info = _feature_info(body)
        if not 1 <= stages <= len(info):
            raise ValueError(f"stages must be between 1 and {len(info)} for this backbone, got {stages}")
        self.body = body
        self.taps = tuple(str(i["module"]) for i in info[-stages:])
        in_channels = [int(i["num_chs"]) for i in info[-stages:]]
        self.fpn = FeaturePyramidNetwork(
            in_channels, channels, extra_blocks=_StrideTwoLevels(channels, extra_levels) if extra_levels else None
        )
        self.out_channels = channels
        with torch.no_grad():
            was = self.training
            sizes = [f.shape[-1] for f in self.eval()(torch.zeros(1, 3, image_size, image_size)).values()]
            self.train(was)
        self.strides = tuple(max(1, round(image_size / s)) for s in sizes)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        found: dict[str, Tensor] = {}
        handles = [self.body.get_submodule(name).register_forward_hook(_store(found, name)) for name in self.taps]
        try:
            self.body.forward_features(x)  # type: ignore[operator]  # timm's API; checked in _feature_info
        finally:
            for h in handles:
                h.remove()
        return self.fpn(OrderedDict((name, found[name]) for name in self.taps))


def _store(found: dict[str, Tensor], name: str) -> Any:
    def hook(_module: nn.Module, _args: Any, output: Tensor) -> None:
        found[name] = output

    return hook


def _feature_info(body: nn.Module) -> list[dict[str, Any]]:
    """timm's ``feature_info`` of the classifier: stage module names, widths, reductions."""
    info = getattr(body, "feature_info", None)
    if not info or not callable(getattr(body, "forward_features", None)):
        raise ValueError(f"{type(body).__name__} has no timm feature_info / forward_features to tap stages from")
    return [dict(i) for i in info]


class Detector(nn.Module):
    """An FCOS detector over a structsearch family backbone (see the module docstring)."""

    def __init__(
        self,
        body: nn.Module,
        num_classes: int,
        image_size: int,
        stages: int = 2,
        extra_levels: int = 2,
        fpn_channels: int = 64,
        head_convs: int = 2,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if fpn_channels % 32:
            raise ValueError(f"fpn_channels must be a multiple of 32 (the head's GroupNorm groups), got {fpn_channels}")
        body.reset_classifier(0)  # type: ignore[operator]  # timm's API (CifarResNet has it too)
        features = StageFPN(body, stages, fpn_channels, extra_levels, image_size)
        anchors = AnchorGenerator(tuple((s,) for s in features.strides), ((1.0,),) * len(features.strides))
        self.num_classes = num_classes
        self.image_size = image_size
        self.fcos = FCOS(
            features,
            num_classes,
            min_size=image_size,
            max_size=image_size,
            anchor_generator=anchors,
            head=FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs),
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )
        cfg = dict(getattr(body, "pretrained_cfg", None) or {})
        # timm reads mean/std/size from here (Preprocess.from_model, default_input_size)
        self.pretrained_cfg = {**cfg, "input_size": (3, image_size, image_size), "num_classes": num_classes}

    @property
    def body(self) -> nn.Module:
        """The searchable classifier body."""
        return self.fcos.backbone.body

    def features(self, x: Tensor) -> list[Tensor]:
        """FPN levels, finest first."""
        return list(self.fcos.backbone(x).values())

    def forward(self, x: Tensor) -> Tensor:
        """Raw head outputs for a preprocessed batch (no decoding, no NMS), concatenated as one
        ``(N, L, num_classes + 5)`` tensor so every tool that takes a model's output tensor (cost,
        latency, memory, the identity checks) takes a detector too; :meth:`split` undoes it."""
        return torch.cat(self.head_outputs(self.features(x)), dim=-1)

    def split(self, out: Tensor) -> HeadOutputs:
        """:meth:`forward`'s tensor as ``(class logits, box regression, centerness)``."""
        cls, box, ctr = out.split([self.num_classes, 4, 1], dim=-1)
        return cls, box, ctr

    def head_outputs(self, features: list[Tensor]) -> HeadOutputs:
        out = self.fcos.head(features)
        return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]

    def anchors(self, x: Tensor, features: list[Tensor]) -> list[Tensor]:
        """One anchor box per location (its stride-sized cell), per image: what FCOS decodes against."""
        images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
        return self.fcos.anchor_generator(images, features)

    def loss(self, x: Tensor, targets: list[dict[str, Tensor]], features: list[Tensor] | None = None) -> Tensor:
        """torchvision's FCOS loss (focal classification + GIoU + centerness) against ground truth."""
        features = self.features(x) if features is None else features
        outputs = dict(zip(HEAD_KEYS, self.head_outputs(features)))
        losses = self.fcos.compute_loss(targets, outputs, self.anchors(x, features), _per_level(features))
        return sum(losses.values(), torch.zeros((), device=x.device))

    def detect(self, x: Tensor) -> list[dict[str, Tensor]]:
        """Post-processed detections (``boxes`` xyxy in input pixels, ``scores``, ``labels``) per image."""
        features = self.features(x)
        outputs = self.head_outputs(features)
        counts = _per_level(features)
        split = {k: list(v.split(counts, dim=1)) for k, v in zip(HEAD_KEYS, outputs)}
        anchors = [list(a.split(counts)) for a in self.anchors(x, features)]
        sizes = [(int(x.shape[-2]), int(x.shape[-1]))] * x.shape[0]
        return self.fcos.postprocess_detections(split, anchors, sizes)


def _per_level(features: list[Tensor]) -> list[int]:
    return [int(f.shape[-2] * f.shape[-1]) for f in features]
