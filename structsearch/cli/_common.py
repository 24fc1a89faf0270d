"""Shared CLI plumbing: one-line errors, the options several commands take, progress bars, model kwargs."""

from __future__ import annotations

import json
import sys
import warnings
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from structsearch.errors import StructsearchError

console = Console()
err_console = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", help="table for people, json for scripts")]
KwOpt = Annotated[
    list[str] | None,
    typer.Option("--kw", help="Model constructor kwarg KEY=VALUE (repeatable), e.g. --kw num_classes=10"),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL of the study storage (default: $STRUCTSEARCH_STORAGE, else ~/.structsearch/studies.db)",
    ),
]


def progress_bar(transient: bool, *extra: ProgressColumn) -> Progress:
    """The bar long commands draw on stderr: task, bar, done/total, a ``status`` field, time (``extra`` after)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        *extra,
        console=err_console,
        transient=transient,
    )


def say(text: str) -> None:
    """Print a result line to stdout as written: no highlighting, long lines not wrapped."""
    console.print(text, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero: how every user error ends."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _warn(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Show a warning as one line on stderr, as errors are: its file and source line mean nothing to a user."""
    err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


class GuardedGroup(TyperGroup):
    """The app's command group: a :class:`StructsearchError` from any command, sub-groups' included,
    ends as one line on stderr and exit status 2 (:func:`fail`); a warning is one line too."""

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click.Context
        with warnings.catch_warnings():
            warnings.showwarning = _warn
            try:
                return super().invoke(ctx)
            except StructsearchError as e:
                fail(str(e))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["img_size=32", "patch_size=4"]`` -> ``{"img_size": 32, "patch_size": 4}`` (values as JSON when they parse)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StructsearchError(f"invalid --kw '{item}': use KEY=VALUE, e.g. --kw img_size=32")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
