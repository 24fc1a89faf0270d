"""Batch transforms on in-memory uint8 image tensors: the teacher's preprocessing and light augmentation.

Both work on whole N×3×H×W uint8 batches on any device (no PIL, no per-image Python loop), because
the proxy trainer indexes one in-memory tensor and a per-image transform would dominate a short
CPU run. Data stays uint8 until the last moment: four times less memory traffic than float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from structsearch.errors import DataError

#: Interpolation modes :func:`torch.nn.functional.interpolate` supports for images.
INTERPOLATIONS: tuple[str, ...] = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")

#: timm / PIL interpolation names without a torch equivalent, mapped to the closest torch mode.
_TIMM_INTERPOLATION = {"lanczos": "bicubic", "hamming": "bilinear", "box": "area", "random": "bilinear"}


def _check_uint8_batch(x: torch.Tensor, who: str) -> None:
    """Our own tensors always pass; anything else is a caller bug, hence ValueError not DataError."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        dtype = x.dtype if isinstance(x, torch.Tensor) else None
        raise ValueError(f"{who} expects a uint8 N×3×H×W batch, got {shape} {dtype}")


@dataclass(frozen=True)
class Preprocess:
    """uint8 images → the float32 input a model was trained on: ``x/255``, resize, normalise.

    Built from the teacher (:meth:`from_model`) so teacher and student see exactly the input the
    teacher's weights expect; the wrong statistics cost the CIFAR teachers up to 0.4 points.
    The whole frame is resized to ``input_size``; timm's ``crop_pct`` centre crop is deliberately
    not applied: small-dataset images (32×32 CIFAR) are already tightly framed and a crop would only
    throw pixels away.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise DataError(f"input size must be two positive integers (H, W), got {self.input_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError(f"mean and std need 3 values (RGB), got {self.mean!r} and {self.std!r}")
        if not all(float(s) > 0 for s in self.std):
            raise DataError(f"std values must be positive, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        # Normalise container types so equal settings compare (and hash) equal.
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_model(cls, model: torch.nn.Module, input_size: int | tuple[int, int] | None = None) -> Preprocess:
        """Read mean, std, input size and interpolation from a timm model's pretrained config.

        ``input_size`` overrides the model's (e.g. 32 to run an ImageNet-shaped model on CIFAR
        images at native resolution). Models without a config get timm's ImageNet defaults.
        """
        import timm.data  # deferred: importing timm costs seconds and most commands never need it

        config: dict[str, Any] = timm.data.resolve_data_config({}, model=model)
        size = _as_hw(input_size) if input_size is not None else tuple(config["input_size"][-2:])
        interpolation = str(config.get("interpolation", "bilinear"))
        return cls(
            input_size=size,
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=_TIMM_INTERPOLATION.get(interpolation, interpolation),
        )

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Return a float32 N×3×H'×W' batch on ``x_uint8``'s device."""
        _check_uint8_batch(x_uint8, "Preprocess")
        x = x_uint8.to(torch.float32).div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            x = self._resize(x)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        # Antialiasing only matters when shrinking; it makes the result close to PIL's resize, which
        # is what timm's eval transforms (and so the teacher's published accuracy) use.
        smooth = self.interpolation in ("bilinear", "bicubic")
        kwargs: dict[str, Any] = {"align_corners": False, "antialias": True} if smooth else {}
        return F.interpolate(x, size=self.input_size, mode=self.interpolation, **kwargs)


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding plus random horizontal flip, on a whole uint8 batch.

    The recipe the CIFAR teachers were trained with (crop 32, padding 4, flip). Padding with 0
    before normalisation matches torchvision's ``RandomCrop(padding=4)``. All randomness is drawn
    from the given generator in a fixed order (row offsets, column offsets, flips), so a seeded
    generator reproduces the batch exactly.
    """

    crop_padding: int = 4
    hflip: bool = True

    @classmethod
    def for_size(cls, height: int, hflip: bool = True) -> Augment:
        """Padding scaled to the image (4 px at 32 px, 1 px at 8 px): a 4 px shift would wreck an
        8x8 digit, while CIFAR's recipe stays exactly as its teachers were trained."""
        return cls(crop_padding=max(1, round(height / 8)), hflip=hflip)

    def __post_init__(self) -> None:
        p = self.crop_padding
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise DataError(f"crop padding must be a non-negative integer, got {p!r}")

    def __call__(self, x_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return an augmented uint8 batch of the same shape, on ``x_uint8``'s device."""
        _check_uint8_batch(x_uint8, "Augment")
        n, c, h, w = x_uint8.shape
        p = self.crop_padding
        if n == 0 or (p == 0 and not self.hflip):
            return x_uint8
        draw = generator.device
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=draw).to(x_uint8.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=draw).to(x_uint8.device)
        cols = torch.arange(w, device=x_uint8.device).expand(n, w)
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=draw).to(x_uint8.device) < 0.5
            cols = torch.where(flip[:, None], w - 1 - cols, cols)
        rows = dy[:, None] + torch.arange(h, device=x_uint8.device)  # (n, h)
        cols = dx[:, None] + cols  # (n, w): crop, then flip within the crop
        padded = F.pad(x_uint8, (p, p, p, p)) if p else x_uint8
        # One gather does crop and flip for the whole batch: out[i, k, r, s] = padded[i, k, rows[i, r], cols[i, s]].
        return padded[
            torch.arange(n, device=x_uint8.device)[:, None, None, None],
            torch.arange(c, device=x_uint8.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]


def _as_hw(size: int | tuple[int, int] | Any) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) in (2, 3):
        return (size[-2], size[-1])  # validated by Preprocess.__post_init__
    raise DataError(f"input size must be an integer or (H, W), got {size!r}")
