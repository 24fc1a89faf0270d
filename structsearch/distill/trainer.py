"""The short knowledge-distillation proxy that scores one candidate student.

A :class:`Distiller` is built once per search. It holds everything that is the same for every
candidate -- the teacher (frozen, in eval mode), the deterministic augmented training stream, the
teacher's outputs on it (from the on-disk cache), the preprocessed validation images and the
teacher's predictions on them -- so :meth:`Distiller.score` pays only for what depends on the
student: BatchNorm recalibration, ``config.steps`` optimisation steps, and one validation pass.

Training draws batches of ``(view, image)`` pairs with a seeded generator, preprocesses them on the
fly from the in-memory uint8 tensor (no ``DataLoader``: on a two-core CPU its per-item collation
would cost more than the forward pass), and minimises Hinton's KD loss (plus optional FitNets hints)
under a cosine learning-rate schedule. Same seed, same data, same device: the same score, bit for
bit on CPU.

The student may come from another family than the teacher (a ViT student of a CNN teacher): it then
learns from logits only; whether it starts from inherited or random weights is the caller's choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structsearch.data import Augment, LoadedData, Preprocess, batch_stream, check_labels, fingerprint
from structsearch.devices import resolve_device
from structsearch.distill.cache import TeacherCache, cache_key
from structsearch.distill.losses import distill_loss, feature_kd_loss
from structsearch.distill.taps import VIT_FAMILIES, FeatureKDError, FeatureTap, check_feature_pair
from structsearch.distill.teacher import (
    CachedTeacher,
    OnlineTeacher,
    TeacherId,
    augmented_views,
    run_teacher,
    state_digest,
    tensor_digest,
)
from structsearch.distill.vit_kd import ViTHints, ViTTeacherTaps
from structsearch.errors import DataError, ProxyConfigError, StructsearchError, one_line
from structsearch.train import (
    LossFn,
    OptimizerName,
    Precision,
    WarmupCosine,
    autocast,
    fits_on_device,
    make_optimizer,
    num_classes_of,
    probe_classes,
    recalibrate_bn,
    run_steps,
    seeded,
)

#: Version of what the cached teacher outputs mean; bump it when their computation changes.
CACHE_FORMAT = 1
#: The proxy's learning rate for a student that inherits the teacher's weights (measured on
#: ResNet-56 -> 50 % width: 0.01 already knocks the inherited weights back for the first tens of
#: steps) and for one trained from scratch (another family).
INHERITED_LR = 0.003
SCRATCH_LR = 0.05

Callback = Callable[[int, float], None]


def default_lr(inherit: bool) -> float:
    """The proxy's learning rate when none is given: :data:`INHERITED_LR` or :data:`SCRATCH_LR`."""
    return INHERITED_LR if inherit else SCRATCH_LR


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of one short distillation run; identical settings give identical scores.

    Defaults suit fine-tuning an *inherited* student for a few hundred steps: SGD with momentum and
    a cosine schedule from a small ``lr`` (:data:`INHERITED_LR`), Hinton's ``T = 4`` and
    ``alpha = 0.9``. A student trained from scratch wants a larger ``lr`` (:func:`default_lr`).
    Values are not re-checked here: a study's settings are validated by its Pydantic spec
    (``structsearch.search.spec.ProxySection``), the ``proxy`` command's by the same model.
    """

    steps: int = 200
    batch_size: int = 128
    optimizer: OptimizerName = "sgd"
    lr: float = INHERITED_LR
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.9
    #: Add FitNets hints on the stage outputs (same-family students only).
    feature_kd: bool = False
    feature_weight: float = 1.0
    #: ViT feature KD: weight of the attention-map KL next to the hidden-state MSE (0: hidden states only).
    attention_weight: float = 1.0
    #: Seeds model-side randomness (adapters, dropout) and the order of training batches.
    seed: int = 0
    #: Seeds the augmented views; part of the teacher-cache key, so keep it fixed across a search.
    aug_seed: int = 0
    #: Augmented copies of each training image the teacher is cached on (random crop + flip).
    views: int = 2
    augment: bool = True
    device: str = "auto"
    bn_recalibration_batches: int = 8
    eval_batch_size: int = 256
    #: With a callback, evaluate on the validation split every this many steps.
    report_every: int = 50
    #: NHWC activations: 15-30 % faster CNN training and inference on this project's 2-core CPU.
    channels_last: bool = True
    #: ``bf16``: the student's training forward/backward under bfloat16 autocast
    #: (:mod:`structsearch.train.precision`); evaluation and the teacher stay float32.
    precision: Precision = "fp32"


@dataclass(frozen=True)
class ProxyResult:
    """The score of one candidate.

    ``val_top1`` is in percent (like ``structsearch eval``); ``teacher_agreement`` is the fraction
    (0..1) of validation images on which the student's and the teacher's top-1 classes agree.
    ``history`` holds ``(step, val_top1)`` of the intermediate evaluations (only with a callback).
    """

    val_top1: float
    teacher_agreement: float
    steps: int
    seconds: float
    train_images_per_s: float
    final_loss: float
    history: tuple[tuple[int, float], ...] = field(default=())
    teacher_cache_hit: bool | None = None


@dataclass(frozen=True)
class ProxyRun:
    """What :func:`run_proxy` measured: ``(step, score)`` of the intermediate evaluations, the
    mean loss of the last (up to) 10 steps, and the training seconds without the evaluations."""

    history: tuple[tuple[int, float], ...]
    final_loss: float
    train_seconds: float


def run_proxy(
    student: nn.Module,
    params: Iterable[Tensor],
    cfg: ProxyConfig,
    batches: Iterable[Tensor],
    loss_fn: LossFn[Tensor],
    evaluate: Callable[[], float],
    callback: Callback | None = None,
    check: Callable[[], None] | None = None,
    on_loss: Callback | None = None,
) -> ProxyRun:
    """The proxy's training run, shared by the classification and the detection distillers.

    ``cfg.steps`` steps of ``loss_fn`` over ``batches`` with ``cfg``'s optimizer over ``params``
    and the warm-up-free cosine schedule. Every ``cfg.report_every`` steps (before the last) with a
    ``callback``, ``evaluate()`` scores the student and ``callback(step, score)`` is told (it may
    raise to prune); ``on_loss(step, loss)`` is told every step's loss; ``check()`` runs before each
    step and may raise to stop the run. The student is left in train mode.
    """
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    history: list[tuple[int, float]] = []
    tail = max(1, min(10, cfg.steps))
    loss_sum: Tensor | float = 0.0  # summed on the device: no synchronisation per step
    clock = {"train": 0.0, "t0": 0.0}

    def after_step(step: int, _batch: Tensor, loss: Tensor, _aux: None) -> None:
        nonlocal loss_sum
        if step > cfg.steps - tail:
            loss_sum = loss_sum + loss.detach()
        if on_loss is not None:
            on_loss(step, float(loss.detach()))
        if callback is not None and step % cfg.report_every == 0 and step < cfg.steps:
            clock["train"] += time.perf_counter() - clock["t0"]
            score = evaluate()
            history.append((step, score))
            callback(step, score)
            student.train()
            clock["t0"] = time.perf_counter()

    student.train()
    clock["t0"] = time.perf_counter()
    run_steps(batches, loss_fn, opt, WarmupCosine(opt, cfg.steps), after_step=after_step, before_step=check)
    clock["train"] += time.perf_counter() - clock["t0"]
    return ProxyRun(tuple(history), float(loss_sum) / tail, clock["train"])


class Distiller:
    """Everything a search's proxy runs share; call :meth:`score` once per candidate.

    ``data``/``train_idx`` are the training images, ``val_data``/``val_idx`` the validation images
    (``val_data`` defaults to ``data``; indices must then be disjoint). ``teacher_id`` names the
    teacher in cache keys (build it with :meth:`TeacherId.of`); without it the teacher's weights
    are hashed. ``cache=None`` keeps the teacher outputs in memory only; ``online_teacher=True``
    skips caching entirely and runs the teacher on every batch (for measuring what the cache saves).
    ``augment`` replaces the default CIFAR recipe (crop with 4 px padding, flip) of the training
    views, e.g. less padding for tiny images or no flip for digits; ``config.augment=False`` turns
    augmentation off. All input checks run here, before any training.
    """

    def __init__(
        self,
        teacher: nn.Module,
        data: LoadedData,
        train_idx: Tensor,
        val_idx: Tensor,
        preprocess: Preprocess,
        config: ProxyConfig = ProxyConfig(),
        *,
        val_data: LoadedData | None = None,
        teacher_id: TeacherId | None = None,
        cache: TeacherCache | None = None,
        online_teacher: bool = False,
        augment: Augment | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.preprocess = preprocess
        # eval mode for good (BatchNorm/dropout frozen); its gradients are never needed because it
        # only runs under inference_mode/no_grad, and only the student's parameters are optimised
        self.teacher = teacher.eval()
        self.train_idx = _as_index(train_idx, len(data), "training")
        val_data = data if val_data is None else val_data
        self.val_idx = _as_index(val_idx, len(val_data), "validation")
        if val_data is data and np.intersect1d(self.train_idx.numpy(), self.val_idx.numpy()).size:
            raise DataError(
                "training and validation indices overlap; a proxy scored on its training images says nothing"
            )

        self.num_classes = num_classes_of(teacher) or probe_classes(teacher.to(self.device), self._pre(val_data.x[:1]))
        check_labels(data, self.num_classes)
        if val_data is not data:
            check_labels(val_data, self.num_classes)
        self.taps: tuple[str, ...] = check_feature_pair(teacher, teacher) if config.feature_kd else ()
        #: ViT feature KD pairs blocks by origin and needs attention maps: the teacher runs on every batch
        self.vit_hints = bool(self.taps) and _is_vit(teacher)

        self.teacher_id = teacher_id.to_dict() if teacher_id else {"state": state_digest(teacher)}
        self.cache = cache
        self.cache_hit: bool | None = None

        # the deterministic training stream: V augmented copies of every training image
        x_train = data.x[self.train_idx]
        augment = (augment or Augment()) if config.augment else None
        views = augmented_views(x_train, augment, config.aug_seed, config.views)
        self.n_train = len(self.train_idx)
        self.train_views = views.reshape(-1, *views.shape[2:])
        self.train_views = self.train_views.to(self.device) if fits_on_device(self.train_views) else self.train_views
        self.train_y = data.y[self.train_idx].to(self.device)
        # what identifies the teacher's outputs, in both cache keys
        outputs_of = {"format": CACHE_FORMAT, "teacher": self.teacher_id, "preprocess": asdict(preprocess)}
        train_key = {
            **outputs_of,
            "what": "teacher-train-outputs",
            "data": fingerprint(data),
            "train_idx": tensor_digest(self.train_idx),
            "augment": asdict(augment) if augment else None,
            "aug_seed": config.aug_seed,
            "views": config.views,
            "views_digest": tensor_digest(views),
            "taps": list(self.taps),
        }
        # the validation set, preprocessed once, and the teacher's predictions on it
        x_val = val_data.x[self.val_idx]
        self.val_y = val_data.y[self.val_idx].to(self.device)
        val_key = {
            **outputs_of,
            "what": "teacher-val-logits",
            "data": fingerprint(val_data),
            "val_idx": tensor_digest(self.val_idx),
        }
        if fits_on_device(x_val, element_size=4):  # preprocessed: float32
            self.val_x: Tensor = torch.cat([self._pre(b) for b in x_val.split(config.eval_batch_size)])
            self._val_preprocessed = True
        else:
            self.val_x, self._val_preprocessed = x_val, False
        val_logits = self._teacher_outputs(val_key, x_val, ())["logits"]
        self.val_teacher_pred = torch.from_numpy(np.asarray(val_logits).argmax(1)).to(self.device)

        self.source: OnlineTeacher | CachedTeacher | ViTTeacherTaps
        if self.vit_hints:
            self.teacher.to(self.device)
            self.source = ViTTeacherTaps(self.teacher, config.attention_weight > 0)
        elif online_teacher:
            self.teacher.to(self.device)
            self.source = OnlineTeacher(self.teacher, self.taps)
        else:
            outputs = self._teacher_outputs(train_key, self.train_views, self.taps)
            feats = [outputs[f"feat{k}"] for k in range(len(self.taps))]
            self.source = CachedTeacher(outputs["logits"], feats, self.device)

    # -- set-up helpers ------------------------------------------------------------------------

    def _pre(self, x_uint8: Tensor) -> Tensor:
        x = self.preprocess(x_uint8.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def _teacher_outputs(self, key_parts: dict[str, Any], x: Tensor, taps: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Teacher outputs on ``x``, from the cache when it has them (sets ``cache_hit``)."""

        def compute() -> dict[str, np.ndarray]:
            self.teacher.to(self.device)
            return run_teacher(
                self.teacher,
                x,
                self.preprocess,
                self.config.eval_batch_size,
                self.device,
                taps,
                self.config.channels_last,
            )

        if self.cache is None:
            self.cache_hit = False
            return compute()
        arrays, hit = self.cache.get_or_compute(cache_key(key_parts), compute, key_parts)
        self.cache_hit = hit if self.cache_hit is None else (self.cache_hit and hit)
        return arrays

    # -- scoring -------------------------------------------------------------------------------

    def score(
        self,
        student: nn.Module,
        callback: Callback | None = None,
        *,
        input_size: int | None = None,
        check: Callable[[], None] | None = None,
    ) -> ProxyResult:
        """Distil into ``student`` (trained in place, left in eval mode) and score it on validation.

        ``callback(step, val_top1)`` is called every ``config.report_every`` steps with the current
        validation accuracy; it may raise (e.g. ``optuna.TrialPruned``) to stop the run. ``check()``
        is called before every step and may raise to stop the run (a trial's deadline or a cancelled
        search: :class:`~structsearch.search.guard.TrialGuard`). Seeding
        happens inside a forked RNG state, so the caller's global random streams are left alone.

        ``input_size`` (px) runs the student at another resolution than the teacher: the teacher's
        targets stay those of its own resolution (the cached outputs), and the student sees the
        same preprocessed batch resized (bilinear, antialiased) -- so a student at 24 px learns to
        match what the teacher says about the full 32 px image. ``None`` or the teacher's own size
        is the unchanged default path.
        """
        size = self._student_size(input_size)
        with seeded(self.config.seed, self.device):
            cfg = self.config
            start = time.perf_counter()
            self._place(student)
            self._probe_student(student, size)
            self._recalibrate(student, size, cfg.bn_recalibration_batches)
            hints = self._feature_kd_setup(student) if cfg.feature_kd else None

            params = [p for p in student.parameters() if p.requires_grad] + list(hints.parameters() if hints else [])

            def loss_fn(pairs: Tensor) -> tuple[Tensor, None]:
                x = self._pre(self.train_views[pairs])
                t_logits, t_feats = self.source(pairs, x)
                with autocast(self.device, cfg.precision):
                    out = student(self._resize(x, size)).float()
                    hint = hints.loss(t_feats).float() if hints is not None else None
                y = self.train_y[pairs.to(self.device) % self.n_train]
                loss = distill_loss(out, t_logits, y, cfg.temperature, cfg.alpha)
                if hint is not None:
                    loss = loss + cfg.feature_weight * hint
                return loss, None

            def evaluate() -> float:
                top1 = self._evaluate(student, size)[0]
                if hints is not None:
                    hints.clear()  # drop the stage outputs the evaluation pass recorded
                return top1

            try:
                batches = self._pair_batches(torch.Generator().manual_seed(cfg.seed), cfg.steps)
                run = run_proxy(student, params, cfg, batches, loss_fn, evaluate, callback, check)
            finally:
                if hints is not None:
                    hints.remove()
            top1, agreement = self._evaluate(student, size)
            images = cfg.steps * self._batch_size()
            return ProxyResult(
                val_top1=top1,
                teacher_agreement=agreement,
                steps=cfg.steps,
                seconds=time.perf_counter() - start,
                train_images_per_s=images / run.train_seconds if run.train_seconds > 0 else float("inf"),
                final_loss=run.final_loss,
                history=run.history,
                teacher_cache_hit=self.cache_hit,
            )

    def _student_size(self, input_size: int | None) -> tuple[int, int] | None:
        """``(H, W)`` to resize the student's inputs to, or None when it runs at the teacher's size."""
        if input_size is None:
            return None
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise ProxyConfigError(f"input_size must be a positive number of pixels, got {input_size!r}")
        size = (input_size, input_size)
        if size == tuple(self.preprocess.input_size):
            return None
        if self.config.feature_kd:
            raise ProxyConfigError(
                "feature KD needs the student at the teacher's resolution; turn it off to train at another size"
            )
        return size

    def _resize(self, x: Tensor, size: tuple[int, int] | None) -> Tensor:
        """The student's view of a preprocessed batch: resized to ``size`` (identity when None)."""
        if size is None or tuple(x.shape[-2:]) == size:
            return x
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return out.contiguous(memory_format=torch.channels_last) if self.config.channels_last else out.contiguous()

    def quick_score(
        self, student: nn.Module, *, batches: int = 4, images: int = 512, input_size: int | None = None
    ) -> float:
        """Top-1 (%) on the first ``images`` validation images after BatchNorm recalibration only.

        No training step: EagleEye (Li et al., ECCV 2020) shows that a pruned network's accuracy
        right after its BatchNorm statistics are re-estimated on a few batches ranks candidates
        much like their accuracy after fine-tuning, at a small fraction of the cost. The student is
        changed in place (its BatchNorm buffers) and left in eval mode.
        """
        size = self._student_size(input_size)
        self._place(student)
        self._recalibrate(student, size, batches)
        return self._evaluate(student, size, images)[0]

    def evaluate(self, model: nn.Module, *, input_size: int | None = None) -> tuple[float, float]:
        """``(top-1 in percent, agreement with the teacher as a fraction)`` on the validation split.

        Moves ``model`` to the distiller's device and leaves it in eval mode. ``input_size`` (px)
        resizes the preprocessed validation images for a student at another resolution; the
        agreement is still with the teacher's predictions at its own resolution.
        """
        return self._evaluate(model, self._student_size(input_size))

    def _evaluate(
        self, model: nn.Module, size: tuple[int, int] | None, images: int | None = None
    ) -> tuple[float, float]:
        """``(top-1 %, teacher agreement)`` on the first ``images`` validation images (default: all)."""
        model.to(self.device).eval()
        n = len(self.val_y) if images is None else min(images, len(self.val_y))
        correct = agree = 0
        with torch.inference_mode():
            for begin in range(0, n, self.config.eval_batch_size):
                sl = slice(begin, min(n, begin + self.config.eval_batch_size))
                x = self.val_x[sl] if self._val_preprocessed else self._pre(self.val_x[sl])
                pred = model(self._resize(x, size)).argmax(1)
                correct += int((pred == self.val_y[sl]).sum())
                agree += int((pred == self.val_teacher_pred[sl]).sum())
        return 100.0 * correct / n, agree / n

    # -- scoring helpers -----------------------------------------------------------------------

    def _place(self, student: nn.Module) -> None:
        student.to(self.device)
        if self.config.channels_last:
            student.to(memory_format=torch.channels_last)

    def _recalibrate(self, student: nn.Module, size: tuple[int, int] | None, count: int) -> None:
        """BatchNorm statistics re-estimated on ``count`` training batches (the same ones for every candidate)."""
        gen = torch.Generator().manual_seed(self.config.seed + 1)
        recalibrate_bn(
            student, (self._resize(self._pre(self.train_views[p]), size) for p in self._pair_batches(gen, count))
        )

    def _batch_size(self) -> int:
        return min(self.config.batch_size, self.n_train * self.config.views)

    def _pair_batches(self, gen: torch.Generator, count: int) -> Iterator[Tensor]:
        """``count`` batches of flat ``(view, image)`` pair indices, epoch after epoch."""
        return batch_stream(self.n_train * self.config.views, self._batch_size(), gen, count)

    def _probe_student(self, student: nn.Module, size: tuple[int, int] | None = None) -> None:
        """Fail before training if the student cannot take the inputs or predicts other classes."""
        student.eval()
        x = self.val_x[:2] if self._val_preprocessed else self._pre(self.val_x[:2])
        x = self._resize(x, size)
        try:
            with torch.no_grad():
                out = student(x)
        except (RuntimeError, AssertionError, ValueError) as e:
            whose = "the teacher's" if size is None else "its"
            raise StructsearchError(
                f"the student cannot run on {whose} {x.shape[-2]}x{x.shape[-1]} inputs: {one_line(e)}"
            ) from None
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise StructsearchError(
                f"the student predicts {tuple(out.shape[1:])} outputs but the teacher has {self.num_classes} "
                "classes; build the student with the teacher's num_classes"
            )

    def _feature_kd_setup(self, student: nn.Module) -> StageHints | ViTHints:
        """The student side of feature KD: its taps and the adapters to the teacher's widths."""
        check_feature_pair(self.teacher, student)
        if self.vit_hints:
            return ViTHints(self.teacher, student, self.config.attention_weight).to(self.device)
        pairs = torch.arange(min(2, self.n_train))
        x = self._pre(self.train_views[pairs])
        _, t_feats = self.source(pairs, x)
        tap = FeatureTap(student, self.taps)
        with torch.no_grad():
            student(x)
        s_feats = tap.take()
        adapters = nn.ModuleList()
        for name, s, t in zip(self.taps, s_feats, t_feats):
            if s.shape[2:] != t.shape[2:]:
                tap.remove()
                raise FeatureKDError(f"stage {name}: student map {tuple(s.shape[1:])} vs teacher {tuple(t.shape[1:])}")
            same = s.shape[1] == t.shape[1]
            adapters.append(nn.Identity() if same else nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False))
        return StageHints(adapters, tap).to(self.device)


class StageHints(nn.Module):
    """FitNets hints on stage outputs: the student's taps and 1x1 conv adapters (CNN families)."""

    def __init__(self, adapters: nn.ModuleList, tap: FeatureTap) -> None:
        super().__init__()
        self.adapters, self.tap = adapters, tap

    def loss(self, teacher_feats: list[Tensor]) -> Tensor:
        return feature_kd_loss(self.tap.take(), teacher_feats, self.adapters)

    def clear(self) -> None:
        self.tap.clear()

    def remove(self) -> None:
        self.tap.remove()


def _is_vit(model: nn.Module) -> bool:
    """A ViT whose feature KD pairs blocks by origin (timm's ``VisionTransformer`` or ``Eva``)."""
    from structsearch.space import family_for

    return family_for(model).name in VIT_FAMILIES


def _as_index(idx: Tensor, n: int, what: str) -> Tensor:
    if not isinstance(idx, Tensor) or idx.ndim != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise DataError(f"{what} indices must be a 1-D integer tensor")
    idx = idx.to("cpu", torch.int64)
    if idx.numel() == 0:
        raise DataError(f"the {what} split is empty")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise DataError(f"{what} indices must lie in 0..{n - 1}")
    return idx
