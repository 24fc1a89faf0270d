"""``structsearch recheck``: measure whether the short proxy ranks candidates like longer training."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from structsearch.cli._common import Format, FormatOpt, StorageOpt, console, print_json, progress_bar


def recheck_table(result) -> Table:
    """The re-checked candidates with both scores and ranks; shared with ``pareto``."""
    from structsearch.cost import format_count

    by_long = sorted(result.entries, key=lambda e: -e.long_score)
    long_rank = {e.trial: i + 1 for i, e in enumerate(by_long)}
    by_proxy = sorted(result.entries, key=lambda e: -e.proxy_score)
    table = Table(
        "trial",
        "group",
        "MACs",
        f"proxy ({result.proxy_steps} steps)",
        "rank",
        f"long ({result.steps} steps)",
        "rank",
        title=f"re-check of {result.study}: {recheck_summary(result)}",
    )
    for i, e in enumerate(by_proxy):
        table.add_row(
            str(e.trial),
            e.group,
            format_count(e.macs),
            f"{e.proxy_score:.2f}",
            str(i + 1),
            f"{e.long_score:.2f}",
            str(long_rank[e.trial]),
        )
    return table


def recheck_summary(result) -> str:
    """One line: tau, Spearman, whether the winner holds, completeness."""
    tau = "n/a" if result.tau is None else f"{result.tau:+.2f} (p={result.tau_p_value:.3f})"
    rho = "n/a" if result.spearman is None else f"{result.spearman:+.2f}"
    winner = {True: "same winner", False: "winner changes", None: "-"}[result.same_winner]
    partial = "" if result.complete else ", partial: rerun to finish"
    return f"Kendall tau {tau}, Spearman {rho}, {winner}, n={len(result.entries)}{partial}"


def recheck(
    study: Annotated[str, typer.Option(help="Study name")],
    top: Annotated[int, typer.Option(help="Re-check the K best front candidates plus K random feasible ones")] = 5,
    steps: Annotated[
        int | None, typer.Option(help="Steps of the longer run (default: 4x the study's proxy steps)")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random candidates' choice")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto (default: the study's)")] = None,
    storage: StorageOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Retrain top candidates longer and store Kendall's tau between proxy and longer scores on the study."""

    from structsearch.search.recheck import recheck as run_recheck

    with progress_bar(transient=format is Format.json) as progress:
        task = progress.add_task(f"recheck {study}", total=None, status="preparing (teacher, data, cache)")

        def on_entry(done: int, total: int, entry) -> None:
            last = "" if entry is None else f"trial {entry.trial}: {entry.proxy_score:.2f} -> {entry.long_score:.2f}"
            progress.update(task, completed=done, total=total, status=last)

        result = run_recheck(study, top, steps, storage, seed=seed, device=device, on_entry=on_entry)
    if format is Format.json:
        print_json(result.to_dict())
        return
    console.print(recheck_table(result))
