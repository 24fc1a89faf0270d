"""Fine-tuning a detection study's student: detection KD plus the ground-truth loss, for many more
steps than the search's proxy, scored by mAP on the study's validation images.

The classification fine-tune (:mod:`structsearch.finetune.run`) runs its teacher online because
every epoch sees fresh augmentations. Detection training is not augmented (the mosaic canvases
are random already, and a flip would change digits), so the teacher's outputs on the training
images are the same every epoch and the ones the search cached serve: a detection fine-tune is
the search's own proxy (:class:`~structsearch.detection.proxy.DetectionDistiller`, same loss:
``alpha`` x KD on the head outputs + ``(1 - alpha)`` x FCOS ground-truth loss) run for ``epochs``
passes over the study's training images with the fine-tune's optimizer, rate and batch size,
starting from the trial's proxy-trained student (or the structure rebuilt from the teacher).

It trains on the study's data only (``--data``, ``--test`` and ``--downstream`` are for
classifiers), and it is not resumable yet: an interrupted detection fine-tune starts over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from structsearch.distill import ProxyConfig
from structsearch.finetune.checkpoint import record_result, save_student_atomically
from structsearch.finetune.config import (
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    KDHyper,
    PhaseResult,
    ProgressEvent,
    ProgressFn,
)
from structsearch.finetune.phases import full_batches
from structsearch.search.context import plan_search
from structsearch.search.detection import load_detection_study
from structsearch.search.stored import StoredTrial


def finetune_detection(
    stored: StoredTrial,
    config: FinetuneConfig,
    hyper: KDHyper,
    out_dir: Path,
    *,
    unsupported: list[str],
    on_progress: ProgressFn | None,
    on_status: Callable[[str], None],
) -> FinetuneResult:
    """Fine-tune ``stored`` (a detection study's trial) and record its mAP next to the teacher's.

    ``unsupported``: the options given that only classification fine-tunes take (a one-line error).
    """
    t_start = time.perf_counter()
    if unsupported:
        raise FinetuneError(
            f"{', '.join(unsupported)}: a detection fine-tune trains and tests on its study's own data "
            "(these options are for classification studies)"
        )
    spec = stored.study_spec
    on_status("loading the teacher and data")
    study = load_detection_study(plan_search(spec))
    steps_per_epoch = full_batches(len(study.train_idx), hyper.batch_size, study.train.source)
    total = config.epochs * steps_per_epoch
    # the proxy's settings are the fine-tune's: KDHyper's fields are ProxyConfig fields
    shared = {k: getattr(config, k) for k in ("momentum", "weight_decay", "device", "eval_batch_size")}
    feature_kd = spec.proxy.feature_kd if config.feature_kd is None else config.feature_kd  # --[no-]feature-kd
    proxy = ProxyConfig(**asdict(hyper), **shared, steps=total, feature_kd=feature_kd)
    distiller = study.distiller(proxy)
    # the distiller re-estimates BatchNorm statistics before training, artifact or rebuilt
    student, start = stored.starting_student(lambda: study.teacher)

    def on_loss(step: int, loss: float) -> None:
        if on_progress is not None and (step % config.report_every == 0 or step % steps_per_epoch == 0):
            epoch = min(config.epochs, (step - 1) // steps_per_epoch + 1)
            on_progress(ProgressEvent("kd", epoch, config.epochs, step, total, loss, None))

    on_status("training")
    scored = distiller.score(student, on_loss=on_loss)
    on_status("testing")
    teacher_map, teacher_map50 = distiller.evaluate(study.teacher)
    save_student_atomically(out_dir, student, stored.arch)
    size = study.preprocess.input_size[0]
    result = FinetuneResult(
        study=stored.study,
        trial=stored.number,
        out=str(out_dir),
        completed=True,
        start=start,
        device=str(distiller.device),
        epochs=config.epochs,
        train_data=study.train.source,
        train_images=len(study.train_idx),
        test_data=study.val.source,
        test_images=len(study.val_idx),
        input_size=size,
        teacher_input_size=size,
        kd=PhaseResult(
            steps=total,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            resumed_from_step=0,
            seconds=scored.seconds,
            train_seconds=scored.seconds,
            final_loss=scored.final_loss,
            train_top1_last_epoch=None,
        ),
        test_map=round(scored.val_top1, 3),
        test_map50=round(scored.map50, 3),
        teacher_map=round(teacher_map, 3),
        teacher_map50=round(teacher_map50, 3),
        extra={**asdict(hyper), "task": "detection"},
    )
    result.seconds = time.perf_counter() - t_start
    record_result(result, out_dir, stored.storage)
    return result
