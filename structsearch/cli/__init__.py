"""The ``structsearch`` command line. Each group of commands lives in its own module."""

from __future__ import annotations

import typer

from structsearch.cli import model_cmds

app = typer.Typer(
    help="Find the best student of a teacher under a FLOPs or params budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("models")(model_cmds.models)
app.command("space")(model_cmds.space)
app.command("cost")(model_cmds.cost)


def main() -> None:
    """Console-script entry point."""
    app()
