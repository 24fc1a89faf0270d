"""``structsearch models | space | cost``: what can be searched and what it costs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.table import Table

from structsearch.cli._common import Format, FormatOpt, KwOpt, console, parse_kwargs, print_json

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.space import BlockChoices


def models(format: FormatOpt = Format.table) -> None:
    """List the model families structsearch can search, with example timm names."""
    from structsearch.space import list_families

    fams = list_families()
    if format is Format.json:
        print_json([{"family": f.name, "description": f.description, "examples": list(f.examples)} for f in fams])
        return
    table = Table("family", "what is searched", "examples")
    for f in fams:
        table.add_row(f.name, f.description, ", ".join(f.examples))
    console.print(table)


def space(
    model: Annotated[str, typer.Argument(help="timm model name, e.g. resnet50 or cifar_resnet56")],
    kw: KwOpt = None,
    input_size: Annotated[int | None, typer.Option(help="Input resolution in pixels (default: the model's)")] = None,
    format: FormatOpt = Format.table,
) -> None:
    """Print a model's block-wise search space and the smallest and largest MACs it reaches."""

    from structsearch.cost import default_input_size, format_count, measure_cost
    from structsearch.models import create_model
    from structsearch.space import space_of
    from structsearch.surgery import build_student

    kwargs = parse_kwargs(kw)
    teacher = create_model(model, **kwargs).eval()
    sp = space_of(teacher, model, kwargs)
    size = (3, input_size, input_size) if input_size else default_input_size(teacher)
    largest = measure_cost(teacher, size)
    smallest = measure_cost(build_student(teacher, sp.smallest_spec()), size)
    if format is Format.json:
        print_json(
            {
                "model": model,
                "family": sp.family,
                "input_size": list(size),
                "stages": [
                    [{k: v for k, v in asdict(c).items() if k != "heads_base"} for c in stage] for stage in sp.stages
                ],
                "smallest": smallest.to_dict(),
                "largest": largest.to_dict(),
            }
        )
        return
    console.print(f"[bold]{model}[/] (family {sp.family}), input {size[1]}x{size[2]}, {sp.num_blocks} blocks")
    table = Table("stage", "blocks", "droppable", "width (base x ratios)", "heads")
    for i, stage in enumerate(sp.stages):
        heads = sorted({h for c in stage for h in (c.heads or ())})
        table.add_row(
            str(i),
            str(len(stage)),
            str(sum(c.removable for c in stage)),
            _stage_widths(stage),
            f"{min(heads)}..{max(heads)}" if heads else "-",
        )
    console.print(table)
    console.print(
        f"MACs: smallest {format_count(smallest.macs)} ({format_count(smallest.params)} params), "
        f"largest {format_count(largest.macs)} ({format_count(largest.params)} params)  ({largest.convention})",
        highlight=False,
    )


def _stage_widths(stage: tuple[BlockChoices, ...]) -> str:
    """One stage's internal widths for the table: bases, the ratios searched, the blocks kept at full width."""
    bases = "/".join(map(str, sorted({c.width_base for c in stage})))
    searched = [c for c in stage if len(c.widths) > 1]
    if not searched:
        return f"{bases} (fixed)"
    ratios = sorted({w for c in searched for w in c.widths})
    fixed = len(stage) - len(searched)
    return f"{bases} x {ratios[0]:.3g}..{ratios[-1]:g} ({len(ratios)} ratios{f'; {fixed} fixed' if fixed else ''})"


def cost(
    model: Annotated[str | None, typer.Argument(help="timm model name (omit when --spec names it)")] = None,
    spec: Annotated[Path | None, typer.Option(help="ArchSpec JSON of a student; its model and kwargs are used")] = None,
    kw: KwOpt = None,
    input_size: Annotated[int | None, typer.Option(help="Input resolution in pixels (default: the model's)")] = None,
    latency: Annotated[
        bool, typer.Option("--latency", help="Also time inference (median ms) on --device with --runtime")
    ] = False,
    memory: Annotated[
        bool, typer.Option("--memory", help="Also measure peak activation memory of one inference forward")
    ] = False,
    runtime: Annotated[str, typer.Option(help="Latency runtime: torch or onnxruntime")] = "torch",
    device: Annotated[str, typer.Option(help="Device to measure on: cpu, cuda, cuda:N or auto")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Images per measured inference call")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads for latency (default: torch's setting)")] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs; the median is reported")] = 20,
    format: FormatOpt = Format.table,
) -> None:
    """Count MACs (fvcore: 1 multiply-add = 1 flop) and parameters; optionally measure latency and memory."""

    from structsearch.cost import default_input_size, format_bytes, format_count, format_ms, measure_cost
    from structsearch.errors import StructsearchError
    from structsearch.models import create_model
    from structsearch.space import ArchSpec
    from structsearch.surgery import build_student

    arch = ArchSpec.load(spec) if spec else None
    name = arch.model if arch else model
    if not name:
        raise StructsearchError("give a MODEL name or --spec SPEC.json")
    if arch and model and model != arch.model:
        raise StructsearchError(f"--spec is for '{arch.model}', not '{model}'; drop MODEL or use a matching spec")
    kwargs = {**(arch.kwargs if arch else {}), **parse_kwargs(kw)}
    net = create_model(name, **kwargs).eval()
    if arch:
        net = build_student(net, arch)
    size = (3, input_size, input_size) if input_size else default_input_size(net)
    report = measure_cost(net, size)
    lat = mem = None
    if latency:
        from structsearch.cost.latency import Runtime, measure_latency

        lat = measure_latency(
            net,
            size,
            runtime=cast(Runtime, runtime),  # any other string is refused there with a CostError
            device=device,
            batch_size=batch_size,
            threads=threads,
            repeats=repeats,
        )
    if memory:
        from structsearch.cost import measure_memory

        mem = measure_memory(net, size, device=device, batch_size=batch_size)
    if format is Format.json:
        out = {"model": name, **report.to_dict()}
        if lat is not None:
            out["latency"] = lat.to_dict()
        if mem is not None:
            out["memory"] = mem.to_dict()
        print_json(out)
        return
    table = Table("model", "input", "MACs", "params", "convention")
    table.add_row(
        name + (" (student)" if arch else ""),
        "x".join(map(str, size)),
        format_count(report.macs),
        format_count(report.params),
        report.convention,
    )
    console.print(table)
    if lat is not None:
        console.print(
            f"latency: {format_ms(lat.median_ms)} median, {format_ms(lat.p90_ms)} p90 over {lat.repeats} runs, "
            f"batch {lat.batch_size}, {lat.runtime_version} on {lat.device}",
            highlight=False,
        )
    if mem is not None:
        console.print(
            f"peak activation memory: {format_bytes(mem.peak_bytes)} ({mem.peak_bytes} bytes), batch {mem.batch_size}, "
            f"{mem.method} on {mem.device}",
            highlight=False,
        )
