"""The recipe of a teacher-training run, read from YAML and validated once (Pydantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from structsearch.errors import TeachError, one_line
from structsearch.train.precision import Precision


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistillFrom(_Strict):
    """The trained model the new teacher learns from (DeiT's "teacher"), named like a study's teacher."""

    model: str
    checkpoint: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TeachData(_Strict):
    """Training images, the validation split that selects the weights, the test split that reports them."""

    train: str
    val: str
    test: str


class TeachRecipe(_Strict):
    """Everything that determines the trained weights (the checkpoint refuses a resume with other settings).

    ``distillation`` is DeiT's (Touvron et al., 2021, section 5) on the one class-token head:
    ``hard`` -- ``(1 - alpha) * CE(s, y) + alpha * CE(s, argmax t)``, the variant DeiT found best;
    ``soft`` -- ``(1 - alpha) * CE(s, y) + alpha * T^2 KL(t/T || s/T)``; ``none`` -- CE only.
    ``teacher_views = V > 0`` precomputes the teacher's logits on V fixed augmented copies of the
    training set (epoch ``e`` trains on copy ``e mod V``), cached on disk like the search's teacher
    outputs; ``0`` draws a fresh augmentation every epoch and runs the teacher on every batch.
    Mixup/CutMix (timm's ``Mixup``) need the teacher on the mixed images, so they need ``teacher_views: 0``.
    ``precision: bf16`` runs the student's forward and backward, and the teacher's per-batch forward,
    under bfloat16 autocast (weights, optimiser state and the loss stay float32): 1.8x the images per
    second of float32 for ``cifar_vit`` and 2.5x for ResNet-56's forward on a CPU with AVX512-BF16
    (measured on the shared 2-core EPYC), and far slower on CPUs without it. Cached teacher views
    (``teacher_views``) are computed once, in float32.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    distill_from: DistillFrom | None = None
    data: TeachData
    #: Side of the square images the model trains and is evaluated at; None: the model's own default
    #: (timm's pretrained config: 224 px for ImageNet models such as ``convnext_atto``, so set 32 to
    #: train one on CIFAR-10 at native resolution instead of upsampled to 224).
    input_size: int | None = Field(default=None, ge=8, le=1024)
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_epochs: float = Field(default=0.5, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    distillation: Literal["hard", "soft", "none"] = "hard"
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    crop_padding: int = Field(default=4, ge=0)
    hflip: bool = True
    mixup: float = Field(default=0.0, ge=0)
    cutmix: float = Field(default=0.0, ge=0)
    teacher_views: int = Field(default=0, ge=0)
    precision: Precision = "fp32"
    eval_every: int = Field(default=1, ge=1, description="epochs between validation passes")
    #: Steps between validation passes instead (a short run's curve); 0: every ``eval_every`` epochs.
    eval_steps: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=100, ge=1, description="steps between checkpoints")
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The recipe as JSON, for checkpoints and sidecars; ``input_size`` only when set, so a recipe
        without it matches the checkpoints and the shipped sidecars written before the field existed."""
        return self.model_dump(mode="json", exclude={"input_size"} if self.input_size is None else None)

    @model_validator(mode="after")
    def _consistent(self) -> TeachRecipe:
        if self.distillation != "none" and self.distill_from is None:
            raise ValueError(f"distillation: {self.distillation} needs distill_from (the model to learn from)")
        if (self.mixup or self.cutmix) and self.teacher_views:
            raise ValueError("mixup/cutmix need the teacher on the mixed images: set teacher_views: 0")
        return self


def load_recipe(path: str | Path) -> TeachRecipe:
    """Read and validate a recipe file; any problem is one :class:`~structsearch.errors.TeachError` line."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TeachError(f"cannot read recipe {p}: {one_line(e)}") from None
    try:
        return TeachRecipe.model_validate(data)
    except ValidationError as e:
        raise TeachError(f"{p}: {one_line(e)}") from None
