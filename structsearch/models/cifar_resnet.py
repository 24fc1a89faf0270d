"""CIFAR ResNets (He et al., 2016, section 4.2) registered as timm models.

``cifar_resnet20`` ... ``cifar_resnet110``: 6n+2 layers, three stages of 16/32/64 channels, and
option-A shortcuts (stride-2 subsampling plus zero-padded channels, no parameters). Layer names
follow the widely used akamaster implementation (``conv1``, ``bn1``, ``layer{1,2,3}.{i}``,
``linear``) so its checkpoints -- the teachers in ``../shared/weights/cifar_resnet`` -- load with
``timm.create_model("cifar_resnet56", checkpoint_path=...)``. Those were trained on ImageNet
normalisation statistics, which the pretrained cfg below records so timm's data config picks them.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

__all__ = ["CifarResNet", "BasicBlockA"]

_CFG = dict(
    url="",
    num_classes=10,
    input_size=(3, 32, 32),
    pool_size=(8, 8),
    crop_pct=1.0,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    first_conv="conv1",
    classifier="linear",
)

default_cfgs = {f"cifar_resnet{d}": dict(_CFG) for d in (20, 32, 44, 56, 110)}


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially, zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


class BasicBlockA(nn.Module):
    """3x3-3x3 residual block. ``conv1``'s output width is the block's internal width."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with three stages of ``n`` basic blocks each."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, **kwargs: object) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlockA(planes, width, stride))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = 64
        # timm's stage description: what detection backbones tap (structsearch.models.detector)
        self.feature_info = [
            dict(num_chs=w, reduction=2**i, module=f"layer{i + 1}") for i, w in enumerate((16, 32, 64))
        ]
        self.linear: nn.Module = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, *args: object) -> None:
        self.num_classes = num_classes
        # timm's convention: 0 classes is no classifier (a feature extractor, e.g. a detection backbone)
        self.linear = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _create(depth: int, pretrained: bool, **kwargs: Any) -> CifarResNet:
    from timm.models import build_model_with_cfg

    return build_model_with_cfg(CifarResNet, f"cifar_resnet{depth}", pretrained, depth=depth, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    return _create(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    return _create(110, pretrained, **kwargs)
