"""Fine-tuning after the search: train a chosen trial's student to completion, then (optionally)
transfer it to another dataset.

The search scores each candidate with a *short* KD proxy (a few hundred steps against cached
teacher outputs on a fixed augmented stream). Once a structure is chosen, it deserves a real
training run, which is what this module does:

* **KD phase** from the study's teacher, starting from the trial's proxy-trained student (its
  ``artifact``) or, when that is gone, from the structure rebuilt with inherited teacher weights;
* **Downstream phase** (``downstream=DATA``): a new head trained on another dataset.

How the phases train, resume and checkpoint: :mod:`structsearch.finetune.phases` and
:mod:`structsearch.finetune.checkpoint`.

Outputs (default ``$STRUCTSEARCH_HOME/finetune/<study>/trial-<NNNNN>/``): ``student.pt`` +
``spec.json`` (so ``structsearch.load(OUT)`` rebuilds the fine-tuned student), ``result.json``,
``checkpoint.pt``; with a downstream run also ``downstream/`` (``structsearch.load`` works there
too: its spec carries the new ``num_classes``) and ``downstream-<settings hash>.pt``. The outcome is
also stored on the study (user attr ``finetune``, keyed by trial number), because finished
Optuna trials cannot take new user attributes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from structsearch.data import Augment, LoadedData, Preprocess, check_labels, fingerprint, load_data
from structsearch.devices import resolve_device
from structsearch.distill import ProxyConfig, top1
from structsearch.distill.taps import VIT_FAMILIES, check_feature_pair
from structsearch.distill.teacher import state_digest, tensor_digest
from structsearch.distill.vit_kd import ViTHints
from structsearch.finetune.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    record_result,
    save_student_atomically,
)
from structsearch.finetune.config import (
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    KDHyper,
    ProgressFn,
    default_out_dir,
)
from structsearch.finetune.detection import finetune_detection
from structsearch.finetune.phases import PhaseContext, downstream_phase, full_batches, kd_loss_fn, prep, run_phase
from structsearch.search.context import StudyData, load_study_data, plan_search
from structsearch.search.stored import StoredTrial
from structsearch.space import family_for
from structsearch.train import num_classes_of, probe_classes, recalibrate_bn, seeded, settings_hash

#: ViT feature KD's weights: the proxy's (``distill.ProxyConfig``), so both train the same loss.
_FEATURE_WEIGHT = ProxyConfig.feature_weight
_ATTENTION_WEIGHT = ProxyConfig.attention_weight


@dataclass(frozen=True)
class _Data:
    """The teacher and the rows it is fine-tuned on and tested on."""

    plan: Any
    teacher: nn.Module
    train: LoadedData
    train_idx: Tensor
    test: LoadedData
    test_idx: Tensor


@dataclass(frozen=True)
class _Student:
    arch: Any
    model: nn.Module
    start: str
    teacher_pre: Preprocess
    pre: Preprocess


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
    status = on_status or (lambda _msg: None)
    t_start = time.perf_counter()
    if stop_after_steps is not None and (isinstance(stop_after_steps, bool) or stop_after_steps < 1):
        raise FinetuneError(f"stop_after_steps must be a positive integer, got {stop_after_steps!r}")
    device = resolve_device(config.device)
    stored = StoredTrial.open(study, trial, storage_url)
    hyper = KDHyper.of(config, stored.study_spec)
    out_dir = Path(out).expanduser() if out else default_out_dir(study, trial)
    if stored.study_spec.task == "detection":
        unsupported = {"--data": data, "--test": test, "--downstream": downstream, "stop_after_steps": stop_after_steps}
        return finetune_detection(
            stored,
            config,
            hyper,
            out_dir,
            unsupported=[k for k, v in unsupported.items() if v is not None],
            on_progress=on_progress,
            on_status=status,
        )

    status("loading the teacher and data")
    d = _load_data(stored.study_spec, config, data, test)
    student = _prepare_student(stored, d, config, hyper.seed, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    augment = Augment.for_size(d.train.x.shape[-2], hflip=stored.study_spec.data.hflip)
    settings = {  # everything that determines the KD phase's result (its checkpoint's settings)
        "format": CHECKPOINT_FORMAT,
        "phase": "kd",
        "study": study,
        "trial": trial,
        "arch": student.arch.to_dict(),
        "start_weights": state_digest(student.model),
        "teacher": state_digest(d.teacher),
        "train_data": fingerprint(d.train),
        "train_idx": tensor_digest(d.train_idx),
        "teacher_preprocess": asdict(student.teacher_pre),
        "student_preprocess": asdict(student.pre),
        "augment": asdict(augment),
        "epochs": config.epochs,
        **asdict(hyper),
        **config.training_settings(),
    }
    hints = _feature_hints(stored, config, d, student, hyper.seed)
    if hints is not None:  # absent when off: runs without feature KD keep their checkpoints' settings
        settings["feature_kd"] = {"feature_weight": _FEATURE_WEIGHT, "attention_weight": hints.attention_weight}
    d.teacher.to(device).eval()
    if config.channels_last:
        d.teacher.to(memory_format=torch.channels_last)

    status("training")
    ctx = PhaseContext(config, hyper.seed, device, out_dir, resume, on_progress)
    loss_fn = kd_loss_fn(
        d.teacher,
        student.teacher_pre,
        student.pre,
        hyper.temperature,
        hyper.alpha,
        config.channels_last,
        hints,
        _FEATURE_WEIGHT,
    )
    try:
        kd = run_phase(
            ctx,
            phase="kd",
            model=student.model,
            data=d.train,
            idx=d.train_idx,
            augment=augment,
            loss_fn=loss_fn,
            epochs=config.epochs,
            optimizer=hyper.optimizer,
            lr=hyper.lr,
            ckpt=out_dir / CHECKPOINT_FILE,
            settings=settings,
            stop_after_steps=stop_after_steps,
            aux=hints,
        )
    finally:
        if hints is not None:
            hints.remove()
    result = FinetuneResult(
        study=study,
        trial=trial,
        out=str(out_dir),
        completed=kd.completed,
        start=student.start,
        device=str(device),
        epochs=config.epochs,
        train_data=d.train.source,
        train_images=len(d.train_idx),
        test_data=d.test.source,
        test_images=len(d.test_idx),
        input_size=student.pre.input_size[0],
        teacher_input_size=student.teacher_pre.input_size[0],
        kd=kd,
        settings_hash=settings_hash(settings),
        extra={**asdict(hyper), "feature_kd": hints is not None},
    )
    if not kd.completed:
        result.seconds = time.perf_counter() - t_start
        return result

    status("testing")
    x_test, y_test = d.test.x[d.test_idx], d.test.y[d.test_idx]
    result.test_top1 = round(top1(student.model, x_test, y_test, student.pre, config.eval_batch_size, device), 3)
    result.teacher_top1 = round(top1(d.teacher, x_test, y_test, student.teacher_pre, config.eval_batch_size, device), 3)
    student_cpu = save_student_atomically(out_dir, student.model, student.arch)
    if downstream:
        status("downstream")
        result.downstream = downstream_phase(
            ctx, student_cpu, student.arch, downstream, downstream_test, student.pre, settings
        )
    result.seconds = time.perf_counter() - t_start
    record_result(result, out_dir, stored.storage)
    return result


# -- the named steps -------------------------------------------------------------------------------


def _load_data(spec: Any, config: FinetuneConfig, data: str | None, test: str | None) -> _Data:
    """The teacher, the training rows and the test rows kept out of them."""
    # loaded exactly as the search did, without the proxy's Distiller (its cache of teacher outputs
    # on fixed views cannot serve a fine-tune's fresh augmentations)
    plan = plan_search(spec)
    study_data = load_study_data(plan)
    test_data, test_idx, exclude = _test_split(spec, test, study_data)
    train_data = load_data(data) if data else study_data.train
    train_idx = torch.arange(len(train_data))
    if exclude is not None and train_data.source == test_data.source:
        keep = torch.ones(len(train_data), dtype=torch.bool)
        keep[exclude] = False
        train_idx = train_idx[keep]
    full_batches(len(train_idx), config.batch_size, train_data.source)  # refused before any training
    return _Data(plan, study_data.teacher, train_data, train_idx, test_data, test_idx)


def _prepare_student(
    stored: StoredTrial, d: _Data, config: FinetuneConfig, seed: int, device: torch.device
) -> _Student:
    """The trial's student at its resolution; a rebuilt one gets its BatchNorm statistics re-estimated."""
    student_size = stored.record.resolution or d.plan.input_size[1]
    teacher_pre = Preprocess.from_model(d.teacher, d.plan.input_size[1:])
    student_pre = dataclasses.replace(teacher_pre, input_size=(student_size, student_size))
    num_classes = num_classes_of(d.teacher) or probe_classes(d.teacher, teacher_pre(d.test.x[:1]))
    check_labels(d.train, num_classes)
    check_labels(d.test, num_classes)
    model, start = stored.starting_student(lambda: d.plan.student_base(d.teacher))
    if start == "rebuilt":
        # surgery leaves the teacher's BatchNorm statistics; re-estimate them as the proxy does
        g = torch.Generator().manual_seed(seed)
        rows = [d.train_idx[torch.randperm(len(d.train_idx), generator=g)[: config.batch_size]] for _ in range(8)]
        model.to(device)
        recalibrate_bn(model, (prep(student_pre, d.train.x[r].to(device), config.channels_last) for r in rows))
    return _Student(stored.arch, model, start, teacher_pre, student_pre)


def _feature_hints(
    stored: StoredTrial, config: FinetuneConfig, d: _Data, student: _Student, seed: int
) -> ViTHints | None:
    """The student side of ViT feature KD when it is on (the setting's, else the study's proxy's), else None.

    As in the proxy, the study's ``proxy.feature_kd`` applies to inherited students only; feature
    KD in a fine-tune is implemented for ViT teacher/student pairs at one resolution, and refused
    (one line) for anything else rather than silently trained without.
    """
    study_default = stored.study_spec.proxy.feature_kd and d.plan.inherit
    wanted = config.feature_kd if config.feature_kd is not None else study_default
    if not wanted:
        return None
    check_feature_pair(d.teacher, student.model)  # same family, or a one-line FeatureKDError
    family = family_for(d.teacher).name
    if family not in VIT_FAMILIES:
        raise FinetuneError(
            f"feature KD in the fine-tune is implemented for ViT teachers and students, not {family}; "
            "pass --no-feature-kd to fine-tune from logits"
        )
    if student.pre.input_size != student.teacher_pre.input_size:
        raise FinetuneError(
            f"feature KD needs the student at the teacher's resolution ({student.teacher_pre.input_size[0]} px), "
            f"not {student.pre.input_size[0]} px; pass --no-feature-kd"
        )
    with seeded(seed, torch.device("cpu")):  # the projections' initialisation is part of the reproducible run
        return ViTHints(d.teacher, student.model, _ATTENTION_WEIGHT)


def _test_split(spec: Any, test: str | None, study: StudyData) -> tuple[LoadedData, Tensor, Tensor | None]:
    """``(test data, test rows, rows of the study's training data to exclude from training)``.

    The default test set is the study's validation data, as its search loaded it: its separate
    ``data.val`` source, or the rows the study carved from its training data. Those carved rows
    are then excluded from training; ``data.train_size`` is ignored, since it only caps the
    *proxy's* training set for speed.
    """
    if test:
        t = load_data(test)
        return t, torch.arange(len(t)), None
    return study.val, study.val_idx, None if spec.data.val else study.val_idx
