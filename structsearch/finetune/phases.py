"""The two training phases of a fine-tune, on the engine's step loop (:mod:`structsearch.train`).

* **KD phase** -- epoch-based Hinton KD from the study's teacher, which runs online on every batch
  (under ``no_grad``): every epoch sees *fresh* augmentations, which a cache keyed on fixed views
  cannot serve. The study's optimizer (or the configured one) and one cosine schedule over all steps.
* **Downstream phase** -- a new classifier head (timm's ``reset_classifier``) trained with
  cross-entropy on another dataset; its top-1 on a held-out split is reported.

Data order and augmentation are *pure functions* of ``(seed, phase, epoch, batch)`` rather than of
a generator's history, so a run resumed from any checkpoint replays exactly the batches an
uninterrupted run would have seen -- on CPU the final weights are bit-identical.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structsearch.data import Augment, LoadedData, Preprocess, check_labels, fingerprint, load_data, train_val_rows
from structsearch.distill import distill_loss, top1
from structsearch.distill.teacher import state_digest, tensor_digest
from structsearch.distill.vit_kd import ViTHints, ViTTeacherTaps
from structsearch.finetune.checkpoint import (
    CHECKPOINT_FORMAT,
    DOWNSTREAM_CHECKPOINT_PREFIX,
    DOWNSTREAM_DIR,
    Running,
    save_student_atomically,
)
from structsearch.finetune.config import FinetuneConfig, FinetuneError, PhaseResult, ProgressEvent, ProgressFn
from structsearch.train import (
    WarmupCosine,
    fits_on_device,
    load_checkpoint,
    make_optimizer,
    run_steps,
    save_checkpoint,
    seeded,
    settings_hash,
)

#: ``loss_fn(x_uint8, y, model) -> (loss, logits)``: the phase's objective.
LossFn = Callable[[Tensor, Tensor, nn.Module], tuple[Tensor, Tensor]]


def prep(pre: Preprocess, x_uint8: Tensor, channels_last: bool) -> Tensor:
    x = pre(x_uint8)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def kd_loss_fn(
    teacher: nn.Module,
    teacher_pre: Preprocess,
    student_pre: Preprocess,
    temperature: float,
    alpha: float,
    channels_last: bool,
    hints: ViTHints | None = None,
    feature_weight: float = 1.0,
) -> LossFn:
    """Hinton KD against the teacher run online on the same (augmented) batch, each at its own preprocessing.

    With ``hints`` (ViT feature KD, attached to the student) the teacher's block tokens and attention
    maps are taken on the same pass and ``feature_weight`` x the hints' loss is added.
    """
    teacher_taps = ViTTeacherTaps(teacher, hints.attention_weight > 0) if hints is not None else None

    def loss(x_uint8: Tensor, y: Tensor, model: nn.Module) -> tuple[Tensor, Tensor]:
        x_teacher = prep(teacher_pre, x_uint8, channels_last)
        t_feats: list[Tensor] = []
        with torch.no_grad():  # not inference_mode: its tensors may not be saved for the student's backward
            if teacher_taps is None:
                t_logits = teacher(x_teacher)
            else:
                t_logits, t_feats = teacher_taps(y, x_teacher)
        x_student = x_teacher if student_pre == teacher_pre else prep(student_pre, x_uint8, channels_last)
        logits = model(x_student)
        total = distill_loss(logits, t_logits, y, temperature, alpha)
        if hints is not None:
            total = total + feature_weight * hints.loss(t_feats)
        return total, logits

    return loss


def full_batches(images: int, batch_size: int, source: str) -> int:
    """Full batches of ``batch_size`` in ``images`` training images of ``source`` (a one-line error for none)."""
    if images < batch_size:
        raise FinetuneError(f"batch size {batch_size} is larger than the {images} training images of {source}")
    return images // batch_size


def _derived_seed(*parts: Any) -> int:
    """A 63-bit seed as a pure function of its parts (``seed, phase, epoch, batch``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class PhaseContext:
    """What both phases of one fine-tune share: its settings and seed, where it computes and writes, how it reports."""

    config: FinetuneConfig
    seed: int
    device: torch.device
    out_dir: Path
    resume: bool
    on_progress: ProgressFn | None


def run_phase(
    ctx: PhaseContext,
    *,
    phase: str,
    model: nn.Module,
    data: LoadedData,
    idx: Tensor,
    augment: Augment,
    loss_fn: LossFn,
    epochs: int,
    optimizer: str,
    lr: float,
    ckpt: Path,
    settings: dict[str, Any],
    stop_after_steps: int | None = None,
    aux: nn.Module | None = None,
) -> PhaseResult:
    """Train ``model`` in place for ``epochs`` epochs over rows ``idx`` of ``data``, resumably.

    ``aux``: modules the loss trains beside the model without being part of it (feature-KD
    projections); they share its optimizer and are checkpointed beside it.

    Batch ``b`` of epoch ``e`` is the ``b``-th slice of a permutation seeded by ``(seed, phase, e)``
    and augmented with a generator seeded by ``(seed, phase, e, b)``: no generator state has to
    survive an interruption for a resumed run to see the same batches. The last incomplete batch
    of an epoch is dropped (BatchNorm on a handful of images is noisy).
    """
    config, seed, device, on_progress = ctx.config, ctx.seed, ctx.device, ctx.on_progress
    bs = config.batch_size
    steps_per_epoch = full_batches(len(idx), bs, data.source)
    total = epochs * steps_per_epoch
    x_src = data.x[idx] if len(idx) != len(data) else data.x
    y_src = data.y[idx] if len(idx) != len(data) else data.y
    if device.type != "cpu" and fits_on_device(x_src):
        x_src = x_src.to(device)
    y_src = y_src.to(device)

    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    aux_params = list(aux.to(device).parameters()) if aux is not None else []
    params = [p for p in model.parameters() if p.requires_grad] + aux_params
    opt = make_optimizer(params, optimizer, lr, weight_decay=config.weight_decay, momentum=config.momentum)
    sched = WarmupCosine(opt, total)

    states: dict[str, Any] = {"model": model, "optimizer": opt, "scheduler": sched, "device": device}
    with seeded(seed, device):
        step, before = 0, 0.0  # the steps and training seconds of earlier calls
        run = Running()
        if ckpt.exists() and ctx.resume:
            state = load_checkpoint(ckpt, settings, **states, needed=("running",) + (("aux",) if aux else ()))
            if aux is not None:
                aux.load_state_dict(state["aux"])
            step, run, before = state["step"], Running(**state["running"]), float(state.get("train_seconds", 0.0))
        elif ckpt.exists():
            ckpt.unlink()
        start_step = step
        t0 = time.perf_counter()
        since_report = 0

        def batches() -> Iterator[tuple[int, Tensor, Tensor]]:
            nonlocal run
            for s in range(start_step, total):
                epoch, b = divmod(s, steps_per_epoch)
                if b == 0:
                    run = Running()
                if b == 0 or s == start_step:  # the epoch's order (also when resuming mid-epoch)
                    g = torch.Generator().manual_seed(_derived_seed(seed, phase, epoch))
                    order = torch.randperm(len(y_src), generator=g)
                rows = order[b * bs : (b + 1) * bs].to(x_src.device)
                gen = torch.Generator().manual_seed(_derived_seed(seed, phase, epoch, b))
                x = augment(x_src[rows], gen).to(device, non_blocking=True)
                yield epoch, x, y_src[rows.to(y_src.device)]

        def loss(batch: tuple[int, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return loss_fn(batch[1], batch[2], model)

        def after_step(step: int, batch: tuple[int, Tensor, Tensor], loss: Tensor, logits: Tensor) -> bool:
            nonlocal since_report
            epoch, _, y = batch
            since_report += 1
            run.add(loss.detach(), (logits.detach().argmax(1) == y).sum(), len(y))
            end_of_epoch = step % steps_per_epoch == 0
            stop_here = stop_after_steps is not None and step >= stop_after_steps and step < total
            if on_progress is not None and (since_report >= config.report_every or end_of_epoch or stop_here):
                since_report = 0
                on_progress(ProgressEvent(phase, min(epoch + 1, epochs), epochs, step, total, run.loss(), run.top1()))
            if end_of_epoch or step % config.checkpoint_every == 0 or stop_here:
                seconds = before + time.perf_counter() - t0  # training seconds of every call so far
                extra = {"running": run.state(), "train_seconds": seconds}
                if aux is not None:
                    extra["aux"] = {k: v.detach().to("cpu") for k, v in aux.state_dict().items()}
                save_checkpoint(ckpt, settings, step=step, **states, extra=extra)
            return stop_here

        model.train()
        step = run_steps(batches(), loss, opt, sched, after_step=after_step, start_step=step)
        seconds = time.perf_counter() - t0
    model.eval()
    return PhaseResult(
        steps=step,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        resumed_from_step=start_step,
        seconds=seconds,
        train_seconds=before + seconds,
        final_loss=run.loss(),
        train_top1_last_epoch=run.top1(),
    )


def downstream_phase(
    ctx: PhaseContext,
    student: nn.Module,
    arch: Any,
    data_text: str,
    test_text: str | None,
    pre: Preprocess,
    base_settings: dict[str, Any],
) -> dict[str, Any]:
    """Transfer the fine-tuned student: new head, cross-entropy on ``data_text``, top-1 on its test rows."""
    from structsearch.space import ArchSpec

    config, seed, device, out_dir = ctx.config, ctx.seed, ctx.device, ctx.out_dir

    data = load_data(data_text)
    test_data = load_data(test_text) if test_text else data
    test_rows = len(test_data) if test_text else None
    train_idx, test_idx = train_val_rows(data.y, test_rows, config.downstream_val_size, seed)
    num_classes = max(data.num_classes, test_data.num_classes)
    check_labels(data, num_classes)
    check_labels(test_data, num_classes)
    if not callable(getattr(student, "reset_classifier", None)):
        raise FinetuneError(f"{arch.model} has no reset_classifier(); it cannot take a new head for {data.source}")
    model = copy.deepcopy(student)
    with seeded(seed, device):  # the new head's initialisation is part of the reproducible run
        model.reset_classifier(num_classes)  # type: ignore[operator]  # checked callable above
    augment = Augment.for_size(data.x.shape[-2], hflip=config.downstream_hflip)
    settings = {
        "format": CHECKPOINT_FORMAT,
        "phase": "downstream",
        "kd_settings": settings_hash(base_settings),
        "start_weights": state_digest(student),
        "num_classes": num_classes,
        "train_data": fingerprint(data),
        "train_idx": tensor_digest(train_idx),
        "preprocess": asdict(pre),
        "augment": asdict(augment),
        "epochs": config.downstream_epochs,
        "lr": config.downstream_lr,
        "seed": seed,
        **config.training_settings(),
    }

    def ce(x_uint8: Tensor, y: Tensor, m: nn.Module) -> tuple[Tensor, Tensor]:
        logits = m(prep(pre, x_uint8, config.channels_last))
        return F.cross_entropy(logits.float(), y), logits

    phase = run_phase(
        ctx,
        phase="downstream",
        model=model,
        data=data,
        idx=train_idx,
        augment=augment,
        loss_fn=ce,
        epochs=config.downstream_epochs,
        optimizer="sgd",
        lr=config.downstream_lr,
        ckpt=out_dir / f"{DOWNSTREAM_CHECKPOINT_PREFIX}{settings_hash(settings)}.pt",
        settings=settings,
    )
    acc = top1(model, test_data.x[test_idx], test_data.y[test_idx], pre, config.eval_batch_size, device)
    # the saved spec carries the new class count, so structsearch.load() builds the right head
    kwargs = {**arch.kwargs, "num_classes": num_classes}
    new_arch = ArchSpec.make(arch.model, arch.stages, kwargs)
    save_student_atomically(out_dir / DOWNSTREAM_DIR, model, new_arch)
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
