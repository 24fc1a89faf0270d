"""Fine-tuning after the search: train a chosen trial's student to completion, then (optionally)
transfer it to another dataset.

The search scores each candidate with a *short* KD proxy (a few hundred steps against cached
teacher outputs on a fixed augmented stream). Once a structure is chosen, it deserves a real
training run, which is what this module does:

* **KD phase** -- epoch-based Hinton KD (:func:`structsearch.distill.distill_loss`, the study's
  ``temperature``/``alpha``) from the study's teacher, starting from the trial's proxy-trained
  student (its ``artifact``) or, when that is gone, from the structure rebuilt with inherited
  teacher weights. Every epoch sees *fresh* augmentations (random crop + flip), so the teacher
  runs online on every batch (under ``no_grad``): a cache keyed on fixed views cannot serve
  changing ones. SGD with momentum and one cosine schedule over all steps.
* **Downstream phase** (``downstream=DATA``) -- the fine-tuned student gets a new classifier head
  (timm's ``reset_classifier``) and is trained with cross-entropy on another dataset; its top-1
  on a held-out split is reported.

Both phases checkpoint atomically (temporary file + ``os.replace``) after every epoch and every
``checkpoint_every`` steps: model, optimizer, scheduler, step, running statistics, torch's RNG
states and the settings with their hash. Data order and augmentation are *pure functions* of
``(seed, phase, epoch, batch)`` rather than of a generator's history, so a run resumed from any
checkpoint replays exactly the batches an uninterrupted run would have seen -- on CPU the final
weights are bit-identical. A checkpoint written with other settings is refused, never silently
continued.

Outputs (default ``$STRUCTSEARCH_HOME/finetune/<study>/trial-<NNNNN>/``): ``student.pt`` +
``spec.json`` (so ``structsearch.load(OUT)`` rebuilds the fine-tuned student), ``result.json``,
``checkpoint.pt``; with a downstream run also ``downstream/`` (``structsearch.load`` works there
too: its spec carries the new ``num_classes``) and ``downstream-<settings hash>.pt``. The outcome is
also stored on the study (user attr ``finetune``, keyed by trial number), because finished
Optuna trials cannot take new user attributes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structsearch.data import Augment, LoadedData, Preprocess, check_labels, fingerprint, load_data, split_train_val
from structsearch.errors import CheckpointError, StructsearchError

__all__ = [
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "PhaseResult",
    "ProgressEvent",
    "default_out_dir",
    "finetune_trial",
]

#: Bump when the meaning of a checkpoint's contents changes; part of the settings hash.
CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
#: Downstream checkpoints are named by their settings hash (``downstream-<hash>.pt``): a new downstream
#: dataset or setting is a new experiment on the same fine-tuned student, not a conflict with the old one.
DOWNSTREAM_CHECKPOINT_PREFIX = "downstream-"
DOWNSTREAM_DIR = "downstream"
RESULT_FILE = "result.json"
#: Study user attribute holding every trial's fine-tuning outcome.
STUDY_ATTR = "finetune"
#: Keep the training images on the accelerator up to this size (CIFAR-10's 50k images: 150 MB).
_ON_DEVICE_LIMIT = 1 << 30


class FinetuneError(StructsearchError):
    """A fine-tuning setting or request that cannot work (bad value, untrained trial, ...)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run. Everything that changes the result is in the settings hash.

    ``lr = 0.02``: the student starts from inherited, proxy-trained weights, so it needs a
    fine-tuning rate, not the 0.1 the CIFAR teachers were trained from scratch with (which would
    first undo what the student inherited); the usual fine-tuning rule of thumb is a tenth to a
    fifth of the from-scratch rate. A full run of many epochs has room for more than the proxy's
    0.003, which is tuned to barely move the weights within a few hundred steps, and the cosine
    schedule anneals the rate to 0 by the last step, so the early steps are the only ones at full
    rate.
    ``device`` is not part of the hash: it says where to compute, not what, so a run may be resumed
    on another device (bit-identity then no longer holds, the settings still do).
    """

    epochs: int
    lr: float = 0.02
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: Default: the study's own proxy settings (``proxy.temperature``, ``proxy.alpha``).
    temperature: float | None = None
    alpha: float | None = None
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
    #: A new, randomly initialised head on a pretrained body: the usual transfer rate.
    downstream_lr: float = 0.01
    #: Random horizontal flips on the downstream data; turn off for digits or text.
    downstream_hflip: bool = True
    #: Held-out fraction carved (stratified) from the downstream data when no test data is given.
    downstream_val_size: float = 0.2

    def __post_init__(self) -> None:
        for name in (
            "epochs",
            "batch_size",
            "checkpoint_every",
            "report_every",
            "eval_batch_size",
            "downstream_epochs",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FinetuneError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("lr", "downstream_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FinetuneError(f"{name.replace('_', '-')} must be a positive number, got {value!r}")
        if not 0.0 <= self.momentum < 1.0 or self.weight_decay < 0:
            raise FinetuneError("momentum must be in [0, 1) and weight decay >= 0")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise FinetuneError(f"temperature must be positive, got {self.temperature!r}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise FinetuneError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not 0.0 < self.downstream_val_size < 1.0:
            raise FinetuneError(f"downstream validation fraction must be in (0, 1), got {self.downstream_val_size!r}")
        from structsearch.distill import resolve_device

        resolve_device(self.device)


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress bar shows: ``phase`` is ``"kd"`` or ``"downstream"``; accuracy in percent."""

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    running_top1: float


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
    train_top1_last_epoch: float

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
    """The outcome of :func:`finetune_trial`; top-1 figures in percent, ``None`` until completed."""

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
        return {
            "epochs": self.epochs,
            "test_top1": self.test_top1,
            "teacher_top1": self.teacher_top1,
            "test_data": self.test_data,
            "train_data": self.train_data,
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


# -- the public entry point ------------------------------------------------------------------------


def finetune_trial(
    study: str,
    trial: int,
    config: FinetuneConfig,
    *,
    data: str | None = None,
    test: str | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    downstream: str | None = None,
    downstream_test: str | None = None,
    storage_url: str | None = None,
    on_progress: ProgressFn | None = None,
    on_status: Callable[[str], None] | None = None,
    stop_after_steps: int | None = None,
) -> FinetuneResult:
    """Fine-tune trial ``trial`` of ``study`` with KD to completion (and downstream, if asked).

    ``data`` overrides the training data (default: the study's training rows that its validation
    does not use); ``test`` the data the final accuracy is measured on (default: the study's
    validation data). ``resume=False`` discards existing checkpoints in ``out``.
    ``stop_after_steps`` ends the KD phase after that many steps in total, with a checkpoint, as
    if the process had been interrupted there (the result then has ``completed=False``); it exists
    for tests and timing runs. All input problems raise a one-line :class:`StructsearchError`
    before any training.
    """
    from structsearch.distill import distill_loss, resolve_device, top1
    from structsearch.distill.teacher import state_digest, tensor_digest
    from structsearch.search.results import STUDY_MARKER, load_study, record_of
    from structsearch.search.spec import parse_study_spec
    from structsearch.search.storage import open_storage

    status = on_status or (lambda _msg: None)
    t_start = time.perf_counter()
    if stop_after_steps is not None and (isinstance(stop_after_steps, bool) or stop_after_steps < 1):
        raise FinetuneError(f"stop_after_steps must be a positive integer, got {stop_after_steps!r}")
    device = resolve_device(config.device)

    # -- the study, the trial and its spec -----------------------------------------------------
    s = load_study(study, open_storage(storage_url, create=False))
    raw_spec = s.user_attrs.get(STUDY_MARKER)
    if raw_spec is None:
        raise FinetuneError(f"study '{study}' was not created by structsearch; nothing to fine-tune")
    spec = parse_study_spec(json.loads(raw_spec), f"stored spec of study '{study}'")
    trials = {t.number: t for t in s.get_trials(deepcopy=False)}
    if trial not in trials:
        hint = f"trials 0..{max(trials)}" if trials else "it has no trials yet"
        raise FinetuneError(f"study '{study}' has no trial {trial} ({hint})")
    frozen = trials[trial]
    rec = record_of(study, frozen)
    if not rec.trained or rec.state != "complete" or not frozen.user_attrs.get("spec"):
        raise FinetuneError(
            f"trial {trial} of '{study}' was not trained (over budget, pruned or unfinished); "
            "pick a trained trial (`structsearch pareto --study NAME` lists them)"
        )
    resolution = frozen.user_attrs.get("resolution")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise FinetuneError(f"trial {trial} of '{study}' has an invalid resolution attribute {resolution!r}")
    temperature = config.temperature if config.temperature is not None else spec.proxy.temperature
    alpha = config.alpha if config.alpha is not None else spec.proxy.alpha
    seed = config.seed if config.seed is not None else spec.seed

    # -- teacher, data: training rows, and the test rows kept out of them ------------------------
    status("loading the teacher and data")
    plan, teacher, study_train = _study_teacher_and_data(spec)
    test_data, test_idx, exclude = _test_split(spec, test, study_train)
    train_data = load_data(data) if data else study_train
    train_idx = torch.arange(len(train_data))
    if exclude is not None and train_data.source == test_data.source:
        keep = torch.ones(len(train_data), dtype=torch.bool)
        keep[exclude] = False
        train_idx = train_idx[keep]
    if len(train_idx) < config.batch_size:
        raise FinetuneError(
            f"batch size {config.batch_size} is larger than the {len(train_idx)} training images of {train_data.source}"
        )

    # -- student -------------------------------------------------------------------------------
    teacher_size = plan.input_size[1]
    student_size = resolution or teacher_size
    teacher_pre = Preprocess.from_model(teacher, plan.input_size[1:])
    student_pre = dataclasses.replace(teacher_pre, input_size=(student_size, student_size))
    num_classes = _num_classes(teacher, teacher_pre, test_data)
    check_labels(train_data, num_classes)
    check_labels(test_data, num_classes)
    arch, student, start = _start_student(frozen, plan, teacher, spec)

    out_dir = Path(out).expanduser() if out else default_out_dir(study, trial)
    out_dir.mkdir(parents=True, exist_ok=True)
    augment = Augment.for_size(train_data.x.shape[-2], hflip=spec.data.hflip)
    if start == "rebuilt":
        # surgery leaves the teacher's BatchNorm statistics; re-estimate them as the proxy does
        from structsearch.distill import recalibrate_bn

        g = torch.Generator().manual_seed(seed)
        rows = [train_idx[torch.randperm(len(train_idx), generator=g)[: config.batch_size]] for _ in range(8)]
        student.to(device)
        recalibrate_bn(student, (_prep(student_pre, train_data.x[r].to(device), config.channels_last) for r in rows))

    settings = {
        "format": CHECKPOINT_FORMAT,
        "phase": "kd",
        "study": study,
        "trial": trial,
        "arch": arch.to_dict(),
        "start_weights": state_digest(student),
        "teacher": state_digest(teacher),
        "train_data": fingerprint(train_data),
        "train_idx": tensor_digest(train_idx),
        "teacher_preprocess": asdict(teacher_pre),
        "student_preprocess": asdict(student_pre),
        "augment": asdict(augment),
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "temperature": temperature,
        "alpha": alpha,
        "seed": seed,
        "channels_last": config.channels_last,
    }
    teacher.to(device).eval()
    if config.channels_last:
        teacher.to(memory_format=torch.channels_last)

    def kd_loss_fn(x_uint8: Tensor, y: Tensor, model: nn.Module) -> tuple[Tensor, Tensor]:
        x_teacher = _prep(teacher_pre, x_uint8, config.channels_last)
        with torch.no_grad():  # not inference_mode: its tensors may not be saved for the student's backward
            t_logits = teacher(x_teacher)
        x_student = x_teacher if student_pre == teacher_pre else _prep(student_pre, x_uint8, config.channels_last)
        logits = model(x_student)
        return distill_loss(logits, t_logits, y, temperature, alpha), logits

    status("training")
    kd = _run_phase(
        phase="kd",
        model=student,
        data=train_data,
        idx=train_idx,
        augment=augment,
        loss_fn=kd_loss_fn,
        epochs=config.epochs,
        lr=config.lr,
        config=config,
        seed=seed,
        device=device,
        ckpt=out_dir / CHECKPOINT_FILE,
        settings=settings,
        resume=resume,
        on_progress=on_progress,
        stop_after_steps=stop_after_steps,
    )
    result = FinetuneResult(
        study=study,
        trial=trial,
        out=str(out_dir),
        completed=kd.completed,
        start=start,
        device=str(device),
        epochs=config.epochs,
        train_data=train_data.source,
        train_images=len(train_idx),
        test_data=test_data.source,
        test_images=len(test_idx),
        input_size=student_size,
        teacher_input_size=teacher_size,
        kd=kd,
        settings_hash=_settings_hash(settings),
        extra={
            "lr": config.lr,
            "batch_size": config.batch_size,
            "temperature": temperature,
            "alpha": alpha,
            "seed": seed,
        },
    )
    if not kd.completed:
        result.seconds = time.perf_counter() - t_start
        return result

    status("testing")
    from structsearch.surgery import save_student

    x_test, y_test = test_data.x[test_idx], test_data.y[test_idx]
    result.test_top1 = round(top1(student, x_test, y_test, student_pre, config.eval_batch_size, device), 3)
    result.teacher_top1 = round(top1(teacher, x_test, y_test, teacher_pre, config.eval_batch_size, device), 3)
    student_cpu = student.to("cpu").to(memory_format=torch.contiguous_format).eval()
    _save_student_atomically(out_dir, student_cpu, arch, save_student)

    if downstream:
        status("downstream")
        result.downstream = _downstream(
            student_cpu,
            arch,
            downstream,
            downstream_test,
            student_pre,
            config,
            seed,
            device,
            out_dir,
            resume,
            base_settings=settings,
            on_progress=on_progress,
        )
    result.seconds = time.perf_counter() - t_start
    _write_json_atomically(out_dir / RESULT_FILE, result.to_dict())
    _record_on_study(s, trial, result.study_summary())
    return result


# -- building blocks -------------------------------------------------------------------------------


def _test_split(spec: Any, test: str | None, study_train: LoadedData) -> tuple[LoadedData, Tensor, Tensor | None]:
    """``(test data, test rows, rows of the study's training data to exclude from training)``.

    The default test set is the study's validation data: its separate ``data.val`` source, or the
    rows the study carved from its training data (same ``val_size`` and seed, so the same rows).
    Those carved rows are then excluded from training; ``data.train_size`` is ignored, since it
    only caps the *proxy's* training set for speed.
    """
    if test:
        t = load_data(test)
        return t, torch.arange(len(t)), None
    if spec.data.val:
        t = load_data(spec.data.val)
        return t, torch.arange(len(t)), None
    _, val_idx = split_train_val(study_train.y, spec.data.val_size, spec.seed)
    return study_train, val_idx, val_idx


def _study_teacher_and_data(spec: Any) -> tuple[Any, nn.Module, LoadedData]:
    """The study's plan, its teacher and its training data, loaded exactly as the search did
    (:func:`structsearch.search.context.load_study_data`), without building the proxy's
    Distiller, whose teacher-output cache on fixed views the fine-tuning cannot use."""
    from structsearch.search.context import load_study_data, plan_search

    plan = plan_search(spec)
    d = load_study_data(plan)
    return plan, d.teacher, d.train


def _num_classes(teacher: nn.Module, pre: Preprocess, data: LoadedData) -> int:
    from structsearch.distill.trainer import num_classes_of

    n = num_classes_of(teacher)
    if n is None:
        with torch.inference_mode():
            n = int(teacher(pre(data.x[:1])).shape[-1])
    return n


def _start_student(frozen: Any, plan: Any, teacher: nn.Module, spec: Any) -> tuple[Any, nn.Module, str]:
    """The trial's structure and its starting weights: the proxy-trained artifact when it is on
    this machine, else the structure rebuilt from the spec (inherited teacher weights, or the base
    model's fresh initialisation for a student of another family)."""
    from structsearch.models import create_model
    from structsearch.space import ArchSpec
    from structsearch.surgery import SPEC_FILE, WEIGHTS_FILE, build_student, get_importance, load_student

    arch = ArchSpec.from_dict(frozen.user_attrs["spec"])
    artifact = Path(frozen.user_attrs.get("artifact") or "")
    if frozen.user_attrs.get("artifact") and (artifact / WEIGHTS_FILE).is_file() and (artifact / SPEC_FILE).is_file():
        return arch, load_student(artifact), "artifact"
    torch.manual_seed(spec.seed)  # a from-scratch base is initialised reproducibly
    base = teacher if plan.inherit else create_model(plan.base_model, **plan.base_kwargs).eval()
    student = build_student(base, arch, get_importance(spec.importance, spec.seed))
    return arch, student, "rebuilt"


def _prep(pre: Preprocess, x_uint8: Tensor, channels_last: bool) -> Tensor:
    x = pre(x_uint8)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _derived_seed(*parts: Any) -> int:
    """A 63-bit seed as a pure function of its parts (``seed, phase, epoch, batch``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


LossFn = Callable[[Tensor, Tensor, nn.Module], tuple[Tensor, Tensor]]


def _run_phase(
    *,
    phase: str,
    model: nn.Module,
    data: LoadedData,
    idx: Tensor,
    augment: Augment,
    loss_fn: LossFn,
    epochs: int,
    lr: float,
    config: FinetuneConfig,
    seed: int,
    device: torch.device,
    ckpt: Path,
    settings: dict[str, Any],
    resume: bool,
    on_progress: ProgressFn | None,
    stop_after_steps: int | None,
) -> PhaseResult:
    """Train ``model`` in place for ``epochs`` epochs over rows ``idx`` of ``data``, resumably.

    ``loss_fn(x_uint8, y, model) -> (loss, logits)`` owns the objective (KD or cross-entropy).
    Batch ``b`` of epoch ``e`` is the ``b``-th slice of a permutation seeded by ``(seed, phase, e)``
    and augmented with a generator seeded by ``(seed, phase, e, b)``: no generator state has to
    survive an interruption for a resumed run to see the same batches. The last incomplete batch
    of an epoch is dropped (BatchNorm on a handful of images is noisy).
    """
    bs = config.batch_size
    steps_per_epoch = len(idx) // bs
    if steps_per_epoch == 0:
        raise FinetuneError(f"batch size {bs} is larger than the {len(idx)} training images of {data.source}")
    total = epochs * steps_per_epoch
    x_src = data.x[idx] if len(idx) != len(data) else data.x
    y_src = data.y[idx] if len(idx) != len(data) else data.y
    if device.type != "cpu" and x_src.numel() <= _ON_DEVICE_LIMIT:
        x_src = x_src.to(device)
    y_src = y_src.to(device)

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _Cosine(total))
    settings_hash = _settings_hash(settings)

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's random streams are left alone
        torch.manual_seed(seed)
        step, run, before = 0, _Running(), 0.0
        if ckpt.exists():
            if resume:
                step, run, before = _load_checkpoint(ckpt, settings, settings_hash, model, opt, sched, device)
            else:
                ckpt.unlink()
        start_step = step
        t0 = time.perf_counter()

        def elapsed() -> float:
            """Training seconds of every call so far (stored in each checkpoint)."""
            return before + time.perf_counter() - t0

        model.train()
        since_report, order_epoch, order = 0, -1, torch.empty(0, dtype=torch.int64)
        while step < total:
            epoch, b = divmod(step, steps_per_epoch)
            if b == 0:
                run = _Running()
            if epoch != order_epoch:
                order_epoch = epoch
                order = torch.randperm(
                    len(y_src), generator=torch.Generator().manual_seed(_derived_seed(seed, phase, epoch))
                )
            rows = order[b * bs : (b + 1) * bs].to(x_src.device)
            gen = torch.Generator().manual_seed(_derived_seed(seed, phase, epoch, b))
            x = augment(x_src[rows], gen).to(device, non_blocking=True)
            y = y_src[rows.to(y_src.device)]
            loss, logits = loss_fn(x, y, model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            since_report += 1
            run.add(loss.detach(), (logits.detach().argmax(1) == y).sum(), len(y))
            end_of_epoch = step % steps_per_epoch == 0
            stop_here = stop_after_steps is not None and step >= stop_after_steps and step < total
            if on_progress is not None and (since_report >= config.report_every or end_of_epoch or stop_here):
                since_report = 0
                on_progress(ProgressEvent(phase, min(epoch + 1, epochs), epochs, step, total, run.loss(), run.top1()))
            if end_of_epoch or step % config.checkpoint_every == 0 or stop_here:
                _save_checkpoint(ckpt, settings, settings_hash, step, run, elapsed(), model, opt, sched, device)
            if stop_here:
                break
        seconds = time.perf_counter() - t0
        train_seconds = before + seconds
    model.eval()
    return PhaseResult(
        steps=step,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        resumed_from_step=start_step,
        seconds=seconds,
        train_seconds=train_seconds,
        final_loss=run.loss(),
        train_top1_last_epoch=run.top1(),
    )


class _Cosine:
    """Cosine decay from the base rate to 0 over ``total`` steps (a class, so it pickles if needed)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))


class _Running:
    """Loss and accuracy sums over the current epoch, kept on the device (no sync per step)."""

    def __init__(self, loss_sum: float = 0.0, correct: int = 0, seen: int = 0) -> None:
        self.loss_sum: Tensor | float = loss_sum
        self.correct: Tensor | int = correct
        self.seen = seen

    def add(self, loss: Tensor, correct: Tensor, n: int) -> None:
        self.loss_sum = self.loss_sum + loss.float() * n
        self.correct = self.correct + correct
        self.seen += n

    def loss(self) -> float:
        return float(self.loss_sum) / self.seen if self.seen else float("nan")

    def top1(self) -> float:
        return 100.0 * float(self.correct) / self.seen if self.seen else float("nan")

    def state(self) -> dict[str, float | int]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen}


def _save_checkpoint(
    path: Path,
    settings: dict[str, Any],
    settings_hash: str,
    step: int,
    run: _Running,
    train_seconds: float,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    device: torch.device,
) -> None:
    """Write the checkpoint to a temporary file in the same directory, then ``os.replace`` it:
    an interruption mid-write leaves the previous checkpoint intact, never half a file."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "settings_hash": settings_hash,
        "settings": json.dumps(settings, sort_keys=True, default=str),
        "step": step,
        "running": run.state(),
        "train_seconds": train_seconds,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_checkpoint(
    path: Path,
    settings: dict[str, Any],
    settings_hash: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    device: torch.device,
) -> tuple[int, _Running, float]:
    """Restore a run from ``path``; refuse a checkpoint of other settings or one that is damaged."""
    fix = "delete it or pass --restart"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is damaged ({first[:120]}); {fix}") from None
    needed = ("format", "settings_hash", "settings", "step", "running", "model", "optimizer", "scheduler", "rng_cpu")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise CheckpointError(f"checkpoint {path} is not a structsearch fine-tuning checkpoint; {fix}")
    if state["settings_hash"] != settings_hash:
        changed = _changed_settings(state["settings"], settings)
        raise CheckpointError(
            f"checkpoint {path} was written with other settings ({changed}); pass --restart to discard it "
            "or --out DIR for a separate run"
        )
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        run = _Running(**state["running"])
        step = int(state["step"])
        train_seconds = float(state.get("train_seconds", 0.0))
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} does not fit this run ({first[:120]}); {fix}") from None
    return step, run, train_seconds


def _changed_settings(stored_json: Any, settings: dict[str, Any]) -> str:
    """``lr 0.02 -> 0.05, epochs 2 -> 3``: what differs, for the refusal message."""
    try:
        stored = json.loads(stored_json)
    except (TypeError, ValueError):
        return "unreadable settings"
    current = json.loads(json.dumps(settings, sort_keys=True, default=str))
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    parts = []
    for k in keys[:4]:
        a, b = stored.get(k), current.get(k)
        short = all(isinstance(v, (int, float, str, type(None))) and len(str(v)) <= 24 for v in (a, b))
        parts.append(f"{k} {a} -> {b}" if short else k)
    return ", ".join(parts) + (" ..." if len(keys) > 4 else "") if parts else "format"


def _downstream(
    student: nn.Module,
    arch: Any,
    data_text: str,
    test_text: str | None,
    pre: Preprocess,
    config: FinetuneConfig,
    seed: int,
    device: torch.device,
    out_dir: Path,
    resume: bool,
    *,
    base_settings: dict[str, Any],
    on_progress: ProgressFn | None,
) -> dict[str, Any]:
    """Transfer the fine-tuned student: new head, cross-entropy on ``data_text``, top-1 on its test rows."""
    from structsearch.distill import top1
    from structsearch.distill.teacher import state_digest, tensor_digest
    from structsearch.space import ArchSpec
    from structsearch.surgery import save_student

    data = load_data(data_text)
    if test_text:
        test_data = load_data(test_text)
        train_idx, test_idx = torch.arange(len(data)), torch.arange(len(test_data))
    else:
        test_data = data
        train_idx, test_idx = split_train_val(data.y, config.downstream_val_size, seed)
    num_classes = max(data.num_classes, test_data.num_classes)
    check_labels(data, num_classes)
    check_labels(test_data, num_classes)
    if not callable(getattr(student, "reset_classifier", None)):
        raise FinetuneError(f"{arch.model} has no reset_classifier(); it cannot take a new head for {data.source}")
    model = copy.deepcopy(student)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # the new head's initialisation is part of the reproducible run
        model.reset_classifier(num_classes)
    augment = Augment.for_size(data.x.shape[-2], hflip=config.downstream_hflip)
    settings = {
        "format": CHECKPOINT_FORMAT,
        "phase": "downstream",
        "kd_settings": _settings_hash(base_settings),
        "start_weights": state_digest(student),
        "num_classes": num_classes,
        "train_data": fingerprint(data),
        "train_idx": tensor_digest(train_idx),
        "preprocess": asdict(pre),
        "augment": asdict(augment),
        "epochs": config.downstream_epochs,
        "lr": config.downstream_lr,
        "batch_size": config.batch_size,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "seed": seed,
        "channels_last": config.channels_last,
    }

    def ce(x_uint8: Tensor, y: Tensor, m: nn.Module) -> tuple[Tensor, Tensor]:
        logits = m(_prep(pre, x_uint8, config.channels_last))
        return F.cross_entropy(logits.float(), y), logits

    phase = _run_phase(
        phase="downstream",
        model=model,
        data=data,
        idx=train_idx,
        augment=augment,
        loss_fn=ce,
        epochs=config.downstream_epochs,
        lr=config.downstream_lr,
        config=config,
        seed=seed,
        device=device,
        ckpt=out_dir / f"{DOWNSTREAM_CHECKPOINT_PREFIX}{_settings_hash(settings)}.pt",
        settings=settings,
        resume=resume,
        on_progress=on_progress,
        stop_after_steps=None,
    )
    acc = top1(model, test_data.x[test_idx], test_data.y[test_idx], pre, config.eval_batch_size, device)
    # the saved spec carries the new class count, so structsearch.load() builds the right head
    kwargs = {**arch.kwargs, "num_classes": num_classes}
    new_arch = ArchSpec.make(arch.model, arch.stages, kwargs)
    model_cpu = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    _save_student_atomically(out_dir / DOWNSTREAM_DIR, model_cpu, new_arch, save_student)
    return {
        "data": data.source,
        "test_data": test_data.source
        + ("" if test_text else f" (held-out {config.downstream_val_size:.0%}, stratified)"),
        "train_images": len(train_idx),
        "test_images": len(test_idx),
        "num_classes": num_classes,
        "epochs": config.downstream_epochs,
        "lr": config.downstream_lr,
        "test_top1": round(acc, 3),
        "phase": phase.to_dict(),
        "out": str(out_dir / DOWNSTREAM_DIR),
    }


def _save_student_atomically(directory: Path, student: nn.Module, arch: Any, save: Callable[..., Path]) -> None:
    """Save into a temporary sibling directory, then move its files into place one by one (each an
    atomic ``os.replace``), so a reader never sees a half-written ``student.pt``."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".save-"))
    try:
        save(tmp, student, arch)
        for f in tmp.iterdir():
            os.replace(f, directory / f.name)
    finally:
        for f in tmp.iterdir() if tmp.exists() else ():
            f.unlink()
        if tmp.exists():
            tmp.rmdir()


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _record_on_study(study: Any, trial: int, summary: dict[str, Any]) -> None:
    """Merge this trial's outcome into the study's ``finetune`` attribute (keyed by trial number).

    Read-modify-write: two fine-tunings of the same study finishing at the same instant could drop
    one entry; each run's full record stays in its own ``result.json``.
    """
    study_attrs = study.user_attrs  # fresh read
    merged = dict(study_attrs.get(STUDY_ATTR) or {})
    merged[str(trial)] = summary
    study.set_user_attr(STUDY_ATTR, merged)
