"""`lmflow report`: one self-contained HTML page of a run, to open in any browser."""

from __future__ import annotations

from pathlib import Path

import click

from ..history import find_run
from ..report import write_report
from .runs import RUNS_DIR_OPTION


@click.command("report")
@click.argument("run_id", metavar="RUN_ID|last")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the page here (default: report.html in the run's directory).",
)
@RUNS_DIR_OPTION
def command(run_id: str, output: Path | None, runs_dir: Path) -> int:
    """Write an HTML page of run RUN_ID (an id, a unique prefix, or `last`): a time line of
    its steps, each step's model, rounds, tool calls with their arguments and results,
    tokens and speed, errors and outputs. The page needs no network and runs no script.

    Prints the page's path. Exit 2 when the run does not exist or its log is unreadable.
    """
    run_dir = find_run(runs_dir, run_id)
    target = write_report(run_dir, output or run_dir / "report.html")
    click.echo(str(target))
    return 0
