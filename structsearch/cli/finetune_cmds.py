"""``structsearch finetune``: train a chosen trial's student to completion with KD (and transfer it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID, TimeRemainingColumn

from structsearch.cli._common import (
    Format,
    FormatOpt,
    StorageOpt,
    fail,
    print_json,
    progress_bar,
    say,
)


def finetune(
    study: Annotated[str, typer.Option(help="Study name")],
    trial: Annotated[
        int, typer.Option(help="Trial number (a trained one; `structsearch pareto --study NAME` lists them)")
    ],
    epochs: Annotated[int, typer.Option(min=1, help="KD epochs over the training data")],
    data: Annotated[
        str | None,
        typer.Option(
            help=(
                "Training data (default: the study's training rows its validation does not use), "
                "e.g. the full npz:../shared/data/cifar10/train.npz"
            )
        ),
    ] = None,
    test: Annotated[
        str | None,
        typer.Option(
            help=(
                "Data the final top-1 is measured on (default: the study's validation data). For the CIFAR "
                "study, npz:../shared/data/cifar10/test.npz[5000:] is the half no structure was selected on"
            )
        ),
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adamw (default: the study's proxy optimizer)")] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate, cosine-annealed to 0 (default: the study's proxy rate, as its trials trained)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step")] = 128,
    feature_kd: Annotated[
        bool | None,
        typer.Option(
            "--feature-kd/--no-feature-kd",
            help="ViT feature KD (hidden states + attention maps) in the KD phase (default: the study's proxy.feature_kd)",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available)")] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: $STRUCTSEARCH_HOME/finetune/STUDY/trial-NNNNN)")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--restart",
            help=(
                "Continue from the checkpoint in --out when its settings match (default), or discard it and start over"
            ),
        ),
    ] = True,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Also checkpoint every this many steps (always after each epoch)")
    ] = 500,
    downstream: Annotated[
        str | None, typer.Option(help="Then fine-tune on this dataset with a new classifier head, e.g. digits")
    ] = None,
    downstream_test: Annotated[
        str | None, typer.Option(help="Test data for --downstream (default: a stratified 20% carved from it)")
    ] = None,
    downstream_epochs: Annotated[int, typer.Option(min=1, help="Cross-entropy epochs on --downstream")] = 10,
    downstream_lr: Annotated[
        float, typer.Option(help="Peak learning rate on --downstream (new head, pretrained body)")
    ] = 0.01,
    downstream_flip: Annotated[
        bool,
        typer.Option(
            "--downstream-flip/--no-downstream-flip",
            help="Random horizontal flips on --downstream (off for digits or text)",
        ),
    ] = True,
    storage: StorageOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Train a trial's student to completion with KD from the teacher: checkpoints, resume, test top-1
    (a detection study's: detection KD + ground-truth loss, test mAP)."""

    from structsearch.finetune import FinetuneConfig, ProgressEvent, finetune_trial

    config = FinetuneConfig(
        epochs=epochs,
        optimizer=optimizer,  # type: ignore[arg-type]  # checked by FinetuneConfig
        lr=lr,
        batch_size=batch_size,
        feature_kd=feature_kd,
        device=device,
        checkpoint_every=checkpoint_every,
        downstream_epochs=downstream_epochs,
        downstream_lr=downstream_lr,
        downstream_hflip=downstream_flip,
    )
    with progress_bar(
        True, TimeRemainingColumn()
    ) as progress:  # transient: an error stays one line, and the summary below says what the bar said
        tasks: dict[str, TaskID] = {}
        prep = progress.add_task(f"finetune {study}#{trial}", total=None, status="preparing")

        def on_progress(e: ProgressEvent) -> None:
            if e.phase not in tasks:
                progress.update(prep, visible=False)
                label = "KD" if e.phase == "kd" else "downstream"
                tasks[e.phase] = progress.add_task(label, total=e.steps, status="")
            progress.update(
                tasks[e.phase],
                completed=e.step,
                status=f"epoch {e.epoch}/{e.epochs}  loss {e.loss:.3f}"
                + ("" if e.running_top1 is None else f"  train top-1 {e.running_top1:.1f}%"),
            )

        try:
            result = finetune_trial(
                study,
                trial,
                config,
                data=data,
                test=test,
                out=out,
                resume=resume,
                downstream=downstream,
                downstream_test=downstream_test,
                storage_url=storage,
                on_progress=on_progress,
                on_status=lambda message: progress.update(prep, status=message),
            )
        except KeyboardInterrupt:
            progress.stop()
            fail("interrupted; run the same command again to resume from the last checkpoint", code=130)
    if format is Format.json:
        print_json(result.to_dict())
        return
    kd = result.kd
    spe = kd.seconds_per_epoch
    say(
        f"[bold]{study}[/] trial {trial}: {result.epochs} KD epoch{'s' if result.epochs != 1 else ''} on {result.train_images} images of "
        f"{result.train_data} ({result.start} start, {result.device}"
        + (f", {spe:.1f} s/epoch" if spe else "")
        + (f", resumed at step {kd.resumed_from_step}" if kd.resumed_from_step else "")
        + ")"
    )
    if result.test_map is not None:  # a detection study's student
        score = (
            f"test mAP [bold]{result.test_map:.2f}%[/] (mAP@.5 {result.test_map50:.2f}%) at {result.input_size} px "
            f"(teacher {result.teacher_map:.2f}%, mAP@.5 {result.teacher_map50:.2f}%)"
        )
    else:
        score = (
            f"test top-1 [bold]{result.test_top1:.2f}%[/] at {result.input_size} px "
            f"(teacher {result.teacher_top1:.2f}% at {result.teacher_input_size} px)"
        )
    say(f"{score} on {result.test_images} images of {result.test_data}")
    if result.downstream:
        ds = result.downstream
        say(
            f"downstream: top-1 [bold]{ds['test_top1']:.2f}%[/] on {ds['test_images']} images of {ds['test_data']} "
            f"({ds['num_classes']} classes, {ds['epochs']} epoch{'s' if ds['epochs'] != 1 else ''})"
        )
    say(f"student and result.json in {result.out}")
