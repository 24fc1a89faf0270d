"""``structsearch teach``: train a teacher from a recipe in ``studies/`` (resumable), export it for shipping."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from structsearch.cli._common import Format, FormatOpt, console, print_json


def teach(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. studies/teach_vit_cifar10.yaml")],
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Override the recipe's epochs (the schedule's length)")
    ] = None,
    hours: Annotated[
        float | None, typer.Option(min=0, help="Stop (checkpointed) after this many hours; run again to resume")
    ] = None,
    work: Annotated[Path | None, typer.Option(help="Checkpoint folder (default $STRUCTSEARCH_HOME/teach/NAME)")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Exported fp16 safetensors (default teachers/NAME.safetensors); a .json sidecar goes beside it"
        ),
    ] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an existing checkpoint")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
    format: FormatOpt = Format.table,
) -> None:
    """Train a teacher (DeiT-style distillation from a trained model), resumable; export it when done."""
    from dataclasses import asdict

    from structsearch.devices import resolve_device
    from structsearch.paths import home
    from structsearch.teach import load_recipe
    from structsearch.teach import teach as run_teach

    spec = load_recipe(recipe)
    work_dir = work or home() / "teach" / spec.name
    if restart:
        (work_dir / "checkpoint.pt").unlink(missing_ok=True)

    def log(event: dict[str, Any]) -> None:
        if format is Format.table:
            console.print(" ".join(f"{k}={v}" for k, v in event.items()), highlight=False)

    result = run_teach(
        spec,
        work_dir,
        out or Path("teachers") / f"{spec.name}.safetensors",
        epochs=epochs,
        hours=hours,
        device=str(resolve_device(device)),
        command=shlex.join(["structsearch", "teach", *sys.argv[2:]]),
        log=log,
    )
    if format is Format.json:
        print_json(asdict(result))
    elif result.finished:
        console.print(
            f"{spec.name}: val top-1 {result.val_top1:.2f}%, test top-1 [bold]{result.test_top1:.2f}%[/] "
            f"-> {result.export}",
            highlight=False,
        )
    else:
        console.print(
            f"{spec.name}: stopped at step {result.step}/{result.total_steps} "
            f"({result.images_per_s:.1f} images/s); run the same command again to resume",
            highlight=False,
        )
