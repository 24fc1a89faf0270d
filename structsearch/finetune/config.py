"""Fine-tuning settings, progress events and results (no training code)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from structsearch.errors import FinetuneError
from structsearch.train import OptimizerName

#: AdamW's rate when the study's proxy names none: Adam's steps are relative to the weights'
#: gradient scale, so the proxy's rate is also a fine-tuning rate.
ADAMW_LR = 0.001


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run. Everything that changes the result is in the settings hash.

    ``optimizer=None`` takes the study's (``proxy.optimizer``), so an AdamW study is fine-tuned
    with AdamW. ``lr=None`` then continues at the rate the study's proxies trained with: its own
    ``proxy.lr`` when it sets one for that optimizer, else for SGD the proxy's default for the
    student (:func:`structsearch.distill.trainer.default_lr`: 0.003 for a student that inherits the
    teacher's weights, 0.05 for one from scratch) and for AdamW :data:`ADAMW_LR`. Measured on a
    50%-MACs ResNet-56 student (10k CIFAR-10 images, batch 64, test[5000:]; proxy val 91.45): SGD at
    0.003 reached 90.74 after 1 epoch and 91.14 after 3, at 0.02 only 84.50 and 88.00 -- a larger rate
    first undoes what the student inherited and a short cosine schedule cannot win it back.
    ``device`` is not part of the hash: it says where to compute, not what, so a run may be resumed
    on another device (bit-identity then no longer holds, the settings still do).
    Temperature and alpha overrides are checked by the KD loss itself (the study's are validated by its spec).
    """

    epochs: int
    optimizer: OptimizerName | None = None
    lr: float | None = None
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: Default: the study's own proxy settings (``proxy.temperature``, ``proxy.alpha``).
    temperature: float | None = None
    alpha: float | None = None
    #: Feature KD during the KD phase; default: the study's own ``proxy.feature_kd``, applied as the
    #: proxy applies it (inherited students only). Implemented for ViT teachers and students
    #: (:mod:`structsearch.distill.vit_kd`: hidden states + attention maps); other pairs are refused.
    feature_kd: bool | None = None
    #: Default: the study's seed.
    seed: int | None = None
    device: str = "auto"
    #: Write a checkpoint every this many optimisation steps (and always at the end of an epoch).
    checkpoint_every: int = 500
    #: Call ``on_progress`` every this many steps (and at the end of every epoch).
    report_every: int = 10
    eval_batch_size: int = 256
    #: NHWC activations: 15-30 % faster CNN training on a CPU (measured for the proxy trainer).
    channels_last: bool = True
    downstream_epochs: int = 10
    #: A new, randomly initialised head on a pretrained body: the usual transfer rate (SGD).
    downstream_lr: float = 0.01
    #: Random horizontal flips on the downstream data; turn off for digits or text.
    downstream_hflip: bool = True
    #: Held-out fraction carved (stratified) from the downstream data when no test data is given.
    downstream_val_size: float = 0.2

    def __post_init__(self) -> None:
        ints = ("epochs", "batch_size", "checkpoint_every", "report_every", "eval_batch_size", "downstream_epochs")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FinetuneError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("lr", "downstream_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FinetuneError(f"{name.replace('_', '-')} must be a positive number, got {value!r}")
        if self.feature_kd is not None and not isinstance(self.feature_kd, bool):
            raise FinetuneError(f"feature-kd must be true or false, got {self.feature_kd!r}")
        if self.optimizer not in (None, "sgd", "adamw"):
            raise FinetuneError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0 or self.weight_decay < 0:
            raise FinetuneError("momentum must be in [0, 1) and weight decay >= 0")
        if not 0.0 < self.downstream_val_size < 1.0:
            raise FinetuneError(f"downstream validation fraction must be in (0, 1), got {self.downstream_val_size!r}")
        from structsearch.devices import resolve_device

        resolve_device(self.device)

    def training_settings(self) -> dict[str, Any]:
        """The settings both phases train with (part of each phase's checkpoint settings)."""
        return {k: getattr(self, k) for k in ("batch_size", "momentum", "weight_decay", "channels_last")}

    def optimizer_and_lr(
        self, study_optimizer: OptimizerName, study_lr: float | None, inherit: bool
    ) -> tuple[OptimizerName, float]:
        """The optimizer and peak rate of the KD phase, given the study's ``proxy.optimizer``/``proxy.lr``
        and whether its students inherit the teacher's weights."""
        optimizer = self.optimizer or study_optimizer
        if self.lr is not None:
            return optimizer, self.lr
        if optimizer == study_optimizer and study_lr is not None:
            return optimizer, study_lr
        if optimizer == "sgd":
            from structsearch.distill.trainer import default_lr

            return optimizer, default_lr(inherit)
        return optimizer, ADAMW_LR


@dataclass(frozen=True)
class KDHyper:
    """The KD phase's settings once the study's defaults are filled in (reported in the result's ``extra``)."""

    optimizer: OptimizerName
    lr: float
    batch_size: int
    temperature: float
    alpha: float
    seed: int

    @classmethod
    def of(cls, config: FinetuneConfig, spec: Any) -> KDHyper:
        """The run's optimizer, rate, KD temperature/alpha and seed: the settings', else the study's."""
        from structsearch.search.context import inherits

        optimizer, lr = config.optimizer_and_lr(spec.proxy.optimizer, spec.proxy.lr, inherits(spec))
        temperature = config.temperature if config.temperature is not None else spec.proxy.temperature
        alpha = config.alpha if config.alpha is not None else spec.proxy.alpha
        seed = config.seed if config.seed is not None else spec.seed
        return cls(optimizer, lr, config.batch_size, temperature, alpha, seed)


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress bar shows: ``phase`` is ``"kd"`` or ``"downstream"``; accuracy in percent
    (``None`` for a detection student, which has no top-1)."""

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    running_top1: float | None


ProgressFn = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PhaseResult:
    """One training phase: how far it got and what it cost.

    ``seconds`` is this call's training time; ``train_seconds`` the training time of every call
    that contributed to the checkpointed steps (kept in the checkpoint, so re-running a finished
    run, which trains nothing, still reports what an epoch cost).
    """

    steps: int
    total_steps: int
    steps_per_epoch: int
    resumed_from_step: int
    seconds: float
    train_seconds: float
    final_loss: float
    #: ``None`` for a detection student (no top-1).
    train_top1_last_epoch: float | None

    @property
    def completed(self) -> bool:
        return self.steps >= self.total_steps

    @property
    def seconds_per_epoch(self) -> float | None:
        """Training seconds per epoch, extrapolated from the steps trained so far (``None``: none yet)."""
        return self.train_seconds / self.steps * self.steps_per_epoch if self.steps > 0 else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["completed"] = self.completed
        d["seconds_per_epoch"] = None if self.seconds_per_epoch is None else round(self.seconds_per_epoch, 3)
        return d


@dataclass
class FinetuneResult:
    """The outcome of :func:`finetune_trial`; figures in percent, ``None`` until completed.

    A classification study's student has ``test_top1``/``teacher_top1``; a detection study's has
    ``test_map``/``test_map50`` and ``teacher_map``/``teacher_map50`` (mAP@[.5:.95] and mAP@.5)
    instead, and no downstream run.
    """

    study: str
    trial: int
    out: str
    completed: bool
    start: str
    device: str
    epochs: int
    train_data: str
    train_images: int
    test_data: str
    test_images: int
    input_size: int
    teacher_input_size: int
    kd: PhaseResult
    test_top1: float | None = None
    teacher_top1: float | None = None
    test_map: float | None = None
    test_map50: float | None = None
    teacher_map: float | None = None
    teacher_map50: float | None = None
    settings_hash: str = ""
    downstream: dict[str, Any] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kd"] = self.kd.to_dict()
        return d

    def study_summary(self) -> dict[str, Any]:
        """The compact record kept on the study (user attr ``finetune``, keyed by trial)."""
        ds = self.downstream or {}
        figures = ("epochs", "test_top1", "teacher_top1", "test_map", "test_map50", "teacher_map", "teacher_map50")
        return {
            **{k: getattr(self, k) for k in (*figures, "test_data", "train_data")},
            "downstream_data": ds.get("data"),
            "downstream_top1": ds.get("test_top1"),
            "seconds": round(self.seconds, 1),
            "seconds_per_epoch": self.kd.to_dict()["seconds_per_epoch"],
            "device": self.device,
            "input_size": self.input_size,
            "out": self.out,
        }


def default_out_dir(study: str, trial: int) -> Path:
    """``$STRUCTSEARCH_HOME/finetune/<study>/trial-<NNNNN>`` (numbered like the trial artifacts)."""
    from structsearch.paths import home

    return home() / "finetune" / study / f"trial-{trial:05d}"
