"""``structsearch search | studies | best | pareto | export``: the product's main job."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from structsearch.cli._common import Format, FormatOpt, StorageOpt, console, print_json, progress_bar

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.context import SearchPlan

FlopsOpt = Annotated[str | None, typer.Option(help="MACs budget (fvcore's FLOPs): 300M, 1.2G or 60% of the teacher")]
ParamsOpt = Annotated[str | None, typer.Option(help="Params budget: 2M, 850k or 60% of the teacher")]
LatencyOpt = Annotated[str | None, typer.Option(help="Latency budget, measured per candidate: 5ms, 800us or 60%")]
MemoryOpt = Annotated[str | None, typer.Option(help="Peak activation memory budget: 50MB, 64MiB or 60%")]


def _fmt(n: int | None) -> str:
    from structsearch.cost import format_count

    return "-" if n is None else format_count(n)


class ScoreColumns:
    """What a study's score is called in tables: val top-1, or for a detection study mAP@[.5:.95]
    with each trial's mAP@.5 beside it (both in %). The study knows its task (its stored spec)."""

    def __init__(self, study: Any) -> None:
        from structsearch.search.results import study_task

        self.detection = study_task(study.user_attrs) == "detection"
        self.name = "mAP" if self.detection else "val top-1"
        self.map50: dict[int, float | None] = {}
        if self.detection:
            self.map50 = {t.number: t.user_attrs.get("map50") for t in study.get_trials(deepcopy=False)}


def _records_table(records: list, scores: ScoreColumns, title: str | None = None) -> Table:
    """Score and cost per record; resolution, latency and memory columns appear when measured."""
    from structsearch.cost import format_bytes, format_ms

    optional = (
        ("px", "resolution", str),
        ("latency", "latency_ms", format_ms),
        ("peak act. memory", "memory_bytes", format_bytes),
    )
    shown = [(head, key, fmt) for head, key, fmt in optional if any(getattr(r, key) is not None for r in records)]
    score_heads = [f"score ({scores.name} %)", *(["mAP@.5 %"] if scores.detection else [])]
    columns = ["study", "trial", *score_heads, "MACs", "params", *(head for head, _, _ in shown)]
    # the device of every measured figure, once under the table instead of in every row
    where = sorted({f"{r.latency_runtime} on {r.latency_device}" for r in records if r.latency_ms is not None})
    table = Table(*columns, title=title, caption=f"latency: {'; '.join(where)}" if where else None)
    for r in records:
        trial = f"{r.trial} ({r.baseline})" if r.baseline else str(r.trial)  # flagged: a baseline, not searched
        row = [r.study, trial, f"{r.score:.2f}"]
        if scores.detection:
            row.append("-" if (m := scores.map50.get(r.trial)) is None else f"{m:.2f}")
        row += [_fmt(r.macs), _fmt(r.params)]
        row += ["-" if (value := getattr(r, key)) is None else fmt(value) for _, key, fmt in shown]
        table.add_row(*row)
    return table


def _resolutions(text: str | None) -> list[int] | None:
    """``"24,28,32"`` -> ``[24, 28, 32]``; one-line error otherwise."""
    if text is None:
        return None
    from structsearch.errors import StructsearchError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise StructsearchError(
            f"invalid --resolutions '{text}': use comma-separated pixel sizes, e.g. 24,28,32"
        ) from None


def search(
    spec_file: Annotated[
        Path | None, typer.Argument(help="Study spec YAML (default: studies/digits_default.yaml's embedded default)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Study name (a new name starts a new study)")] = None,
    teacher: Annotated[str | None, typer.Option(help="Teacher timm model name")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Teacher checkpoint (state dict)")] = None,
    student: Annotated[
        str | None, typer.Option(help="Student base model (default: the teacher's architecture)")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Training data: npz:PATH, imagefolder:PATH, torchvision:NAME:ROOT, digits")
    ] = None,
    val_data: Annotated[str | None, typer.Option(help="Separate validation data (default: carved from --data)")] = None,
    budget_flops: FlopsOpt = None,
    budget_params: ParamsOpt = None,
    budget_latency: LatencyOpt = None,
    budget_memory: MemoryOpt = None,
    resolutions: Annotated[
        str | None, typer.Option(help="Student input resolutions to search, e.g. 24,28,32 (the teacher keeps its own)")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(help="accuracy (single objective, pruned), or accuracy,X with X macs, params, latency or memory"),
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe, nsga2 or random")] = None,
    trials: Annotated[int | None, typer.Option(help="Number of trials")] = None,
    steps: Annotated[int | None, typer.Option(help="Proxy KD steps per candidate")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto")] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Seconds between trial heartbeats; a trial of a killed search is failed and re-run after 3 silent beats",
            min=1,
        ),
    ] = 10,
    storage: StorageOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Search students under a budget (resumes the study when it exists)."""

    from structsearch.search import default_spec, load_study_spec, run_search
    from structsearch.search.results import baseline_gains, pareto_front, study_records

    spec = load_study_spec(spec_file) if spec_file else default_spec()
    spec = spec.with_overrides(
        **{
            "name": name,
            "teacher.model": teacher,
            "teacher.checkpoint": checkpoint,
            "student.model": student,
            "data.train": data,
            "data.val": val_data,
            "budget.flops": budget_flops,
            "budget.params": budget_params,
            "budget.latency": budget_latency,
            "budget.memory": budget_memory,
            "data.resolutions": _resolutions(resolutions),
            "objectives": objective.split(",") if objective else None,
            "sampler": sampler,
            "trials": trials,
            "proxy.steps": steps,
            "proxy.device": device,
            "seed": seed,
        }
    )
    with progress_bar(transient=format is Format.json) as progress:
        task = progress.add_task(f"search {spec.name}", total=spec.trials, status="preparing (teacher, data, cache)")

        def on_trial(done: int, feasible: int, best: float | None) -> None:
            best_txt = f"best {best:.2f}%" if best is not None else "best -"
            progress.update(task, completed=done, status=f"feasible {feasible}, {best_txt}")

        def on_plan(plan: SearchPlan) -> None:  # a search at an unintended size shows before its first trial
            sides = plan.resolutions or ()
            px = (
                f"{min(sides)}-{max(sides)}"
                if len(sides) > 1
                else "x".join(map(str, plan.student_input_size(None)[1:]))
            )
            progress.update(task, description=f"search {spec.name} at {px} px")

        study = run_search(spec, storage, on_trial=on_trial, heartbeat_interval=heartbeat, on_plan=on_plan)
    records = study_records(study)
    front = pareto_front(records)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "trials": len(records),
        "trained": sum(r.trained and not r.state == "pruned" for r in records),
        "over_budget": sum(not r.feasible for r in records),
        "teacher_score": study.user_attrs.get("teacher_score"),
        "teacher_macs": study.user_attrs.get("teacher_macs"),
        "input_size": study.user_attrs.get("input_size"),
        "pareto": [r.to_dict() for r in front],
        "baselines": [g.to_dict() for g in baseline_gains(records)],
    }
    if format is Format.json:
        print_json(summary)
        return
    scores = ScoreColumns(study)
    size = summary["input_size"]
    console.print(
        f"study [bold]{study.study_name}[/]: {summary['trials']} trials, {summary['over_budget']} over budget "
        f"(never trained); teacher: {summary['teacher_score']}% {scores.name} at {_fmt(summary['teacher_macs'])} MACs"
        + (f", images at {size[-2]}x{size[-1]} px" if size else "")
    )
    console.print(_records_table(front, scores, title="Pareto front (score vs MACs)"))
    _print_gains(baseline_gains(records))


def studies(storage: StorageOpt = None, format: FormatOpt = Format.table) -> None:
    """List studies with teacher, data, budget and trial counts."""

    from structsearch.search import list_studies

    rows = list_studies(storage)
    if format is Format.json:
        print_json(rows)
        return
    table = Table("study", "teacher", "data", "budget", "trials", "trained", "best")
    for r in rows:
        budget = " ".join(
            f"{what}<={r[f'budget_{what}']}"
            for what in ("flops", "params", "latency", "memory")
            if r.get(f"budget_{what}")
        )
        table.add_row(
            r["study"],
            r["teacher"],
            r["data"],
            budget or "-",
            f"{r['trials']}/{r['trials_requested']}",
            str(r["trained"]),
            "-" if r["best_score"] is None else f"{r['best_score']:.2f}",
        )
    console.print(table)


def best(
    budget_flops: FlopsOpt = None,
    budget_params: ParamsOpt = None,
    budget_latency: LatencyOpt = None,
    budget_memory: MemoryOpt = None,
    study: Annotated[str | None, typer.Option(help="Look in one study (default: every study in the storage)")] = None,
    storage: StorageOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Print the highest-scoring stored student within the budget."""

    from structsearch.search import best_under_budget
    from structsearch.search.results import baseline_gains, load_study, study_records
    from structsearch.search.storage import open_storage

    r = best_under_budget(
        budget_flops, budget_params, study, storage, budget_latency=budget_latency, budget_memory=budget_memory
    )
    if format is Format.json:  # the same record GET /searches/{id}/best returns
        print_json(r.to_dict())
        return
    s = load_study(r.study, open_storage(storage, create=False))
    gains = baseline_gains(study_records(s))
    console.print(_records_table([r], ScoreColumns(s), title="best within budget"))
    console.print_json(data=r.spec)
    _print_gains(gains)


def pareto(
    study: Annotated[str, typer.Option(help="Study name")],
    cost: Annotated[
        str, typer.Option(help="macs, params, latency (measured ms) or memory (peak activation bytes)")
    ] = "macs",
    plot: Annotated[Path | None, typer.Option(help="Draw the front to a .png or .html file")] = None,
    storage: StorageOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Print (and draw) a study's Pareto front of score vs cost."""

    from structsearch.cli.recheck_cmds import recheck_summary
    from structsearch.errors import StructsearchError
    from structsearch.search import pareto_front, plot_front, study_records
    from structsearch.search.recheck import rechecks_from_attrs
    from structsearch.search.results import baseline_gains, load_study
    from structsearch.search.storage import open_storage

    if cost not in ("macs", "params", "latency", "memory"):
        raise StructsearchError(f"--cost must be macs, params, latency or memory, not '{cost}'")
    s = load_study(study, open_storage(storage, create=False))
    records = study_records(s)
    front = pareto_front(records, cost)
    if plot:
        plot_front(records, front, cost, plot, title=s.study_name)
    rechecks = rechecks_from_attrs(s.user_attrs)
    gains = baseline_gains(records)
    if format is Format.json:
        print_json(
            {
                "study": s.study_name,
                "cost": cost,
                "front": [r.to_dict() for r in front],
                "recheck": [r.to_dict() for r in rechecks],
                "baselines": [g.to_dict() for g in gains],
            }
        )
        return
    console.print(_records_table(front, ScoreColumns(s), title=f"Pareto front of {s.study_name} (score vs {cost})"))
    _print_gains(gains)
    for r in rechecks:
        console.print(f"proxy fidelity at {r.steps} steps (`structsearch recheck`): {recheck_summary(r)}")
    if not rechecks:
        console.print("proxy fidelity not measured yet: run `structsearch recheck --study " + s.study_name + "`")
    if plot:
        console.print(f"plot written to {plot}")


def _print_gains(gains: list[Any]) -> None:
    """The search's gain over each baseline of the study, one line each (``BaselineGain``s)."""
    from structsearch.search.results import gain_summary

    if gains:
        console.print("gain over the baselines (points; best searched at <= their MACs):")
    for g in gains:
        console.print(f"  {gain_summary(g)}")


def export(
    study: Annotated[str, typer.Option(help="Study name")],
    trial: Annotated[int, typer.Option(help="Trial number")],
    out: Annotated[Path, typer.Option(help="Output directory")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write student.onnx, checked against onnxruntime")] = False,
    storage: StorageOpt = None,
) -> None:
    """Write a trial's student (weights, spec JSON, optionally ONNX); `structsearch.load(DIR)` rebuilds it."""

    from structsearch.search import export_trial

    written = export_trial(study, trial, out, storage, onnx=onnx)
    for path in written:
        console.print(f"wrote {path}")
