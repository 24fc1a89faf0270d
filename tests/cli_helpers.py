"""In-process CLI calls for tests: one runner, and the one-line-error check every command must pass."""

from __future__ import annotations

from typer.testing import CliRunner

from structsearch.cli import app

runner = CliRunner()


def one_line_error(args: list[str], *fragments: str) -> None:
    """``structsearch ARGS`` exits 2 with exactly one stderr line containing every fragment."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # a clean exit, not a raised error
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
