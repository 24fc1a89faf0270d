"""The ``structsearch`` command line. Each group of commands lives in its own module."""

from __future__ import annotations

import typer

from structsearch.cli import (
    finetune_cmds,
    model_cmds,
    proxy_cmds,
    recheck_cmds,
    search_cmds,
    service_cmds,
    synth_cmds,
    teach_cmds,
)
from structsearch.cli._common import GuardedGroup

app = typer.Typer(
    help="Find the best student of a teacher under a MACs (--budget-flops), params, latency or memory budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=GuardedGroup,
)
app.command("models")(model_cmds.models)
app.command("space")(model_cmds.space)
app.command("cost")(model_cmds.cost)
app.command("search")(search_cmds.search)
app.command("studies")(search_cmds.studies)
app.command("best")(search_cmds.best)
app.command("pareto")(search_cmds.pareto)
app.command("export")(search_cmds.export)
app.command("recheck")(recheck_cmds.recheck)
app.command("finetune")(finetune_cmds.finetune)
app.add_typer(service_cmds.db_app, name="db")
app.add_typer(service_cmds.apikey_app, name="apikey")
app.command("serve")(service_cmds.serve)
app.command("worker")(service_cmds.worker)
app.command("dashboard")(service_cmds.dashboard)
app.command("eval")(proxy_cmds.evaluate)
app.command("proxy")(proxy_cmds.proxy)
app.command("synthesize")(synth_cmds.synthesize)
app.command("teach")(teach_cmds.teach)


def main() -> None:
    """Console-script entry point."""
    app()
