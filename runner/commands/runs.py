"""`lmflow runs`: the history of runs kept under .lmflow/runs/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_OK, ConfigurationError
from ..history import RUNS_DIR, find_run, list_runs, prune_runs, summarize
from ..runlog import read_events

_COLOURS = {"succeeded": "green", "failed": "red", "error": "red", "interrupted": "yellow"}
RUNS_DIR_OPTION = click.option(
    "--runs-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=RUNS_DIR,
    show_default=True,
    help="Where the runs are kept.",
)


@click.group("runs")
def command() -> None:
    """List past runs, show one of them, prune old ones."""


@command.command("list")
@RUNS_DIR_OPTION
@click.option("-n", "--limit", type=click.IntRange(min=1), help="Show only the newest N runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(runs_dir: Path, limit: int | None, as_json: bool) -> int:
    """Runs, newest first: id, status, start time, duration, workflow; a replayed run is
    marked with its cassette."""
    runs = list_runs(runs_dir)[:limit]
    if as_json:
        rows = [
            {
                "run_id": r.run_id,
                "workflow": r.workflow,
                "status": r.status,
                "started": r.started.isoformat() if r.started else None,
                "duration": r.duration,
                "problem": r.problem,
                "replayed_from": r.replayed_from,
            }
            for r in runs
        ]
        click.echo(json.dumps(rows, indent=2))
        return EXIT_OK
    if not runs:
        click.echo(f"no runs under {runs_dir}")
        return EXIT_OK
    for r in runs:
        when = r.started.strftime("%Y-%m-%d %H:%M:%S UTC") if r.started else "?"
        took = f"{r.duration:.1f}s" if r.duration is not None else "-"
        status = click.style(f"{r.status:<11}", fg=_COLOURS.get(r.status))
        line = f"{r.run_id}  {status}  {when}  {took:>8}  {r.workflow or '?'}"
        if r.replayed_from:
            line += click.style(f"  [replay of {r.replayed_from}]", fg="cyan")
        click.echo(line + (click.style(f"  ({r.problem})", dim=True) if r.problem else ""))
    return EXIT_OK


@command.command("prune")
@RUNS_DIR_OPTION
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    required=True,
    metavar="N",
    help="How many of the newest runs to keep.",
)
def prune_command(runs_dir: Path, keep: int) -> int:
    """Delete all runs but the newest N (their events, results and server logs)."""
    removed = prune_runs(runs_dir, keep)
    for path in removed:
        click.echo(f"removed {path.name}")
    click.echo(f"{len(removed)} run(s) removed, the newest {keep} kept", err=True)
    return EXIT_OK


@command.command("show")
@click.argument("run_id")
@RUNS_DIR_OPTION
@click.option("--events", "show_events", is_flag=True, help="Print the whole event log.")
def show_command(run_id: str, runs_dir: Path, show_events: bool) -> int:
    """Steps, outputs and failures of RUN_ID (an id, a unique prefix of one, or `last`)."""
    summary = summarize(find_run(runs_dir, run_id))
    click.secho(f"run {summary.run_id}: {summary.workflow or '?'}", bold=True)
    click.echo(f"  status: {summary.status}")
    if summary.started:
        click.echo(f"  started: {summary.started.strftime('%Y-%m-%d %H:%M:%S UTC')}")
    if summary.duration is not None:
        click.echo(f"  duration: {summary.duration:.1f}s")
    if summary.replayed_from:
        click.echo(f"  replayed from: {summary.replayed_from}")
    if summary.problem:
        click.secho(f"  note: {summary.problem}", fg="yellow")
    result = summary.result or {}
    if result.get("error"):
        click.secho(f"  error: {result['error']}", fg="red")
    _show_steps(result.get("steps", []))
    if result.get("outputs"):
        click.secho("outputs:", bold=True)
        for name, value in result["outputs"].items():
            click.echo(f"  {name}: {_text(value)}")
    if show_events:
        if not (summary.path / "events.jsonl").is_file():
            raise ConfigurationError(
                f"run {summary.run_id} has no events.jsonl",
                hint="it was run with --log FILE (the events are there) or --no-log",
            )
        log = read_events(summary.path / "events.jsonl")
        click.secho("events:", bold=True)
        for event in log.events:
            click.echo(json.dumps(event, ensure_ascii=False))
        if log.truncated_line is not None:
            click.secho(
                f"note: line {log.truncated_line} of {summary.path / 'events.jsonl'} is cut off "
                "(the run was stopped while writing it); the events above are complete",
                fg="yellow",
                err=True,
            )
    return EXIT_OK


def _show_steps(steps: list[dict[str, Any]]) -> None:
    if not steps:
        return
    click.secho("steps:", bold=True)
    for step in steps:
        status = str(step.get("status", "?"))
        detail = []
        if step.get("rounds"):
            detail.append(f"{step['rounds']} round(s)")
        if step.get("tool_calls"):
            detail.append(f"{step['tool_calls']} tool call(s)")
        if isinstance(step.get("duration"), (int, float)):
            detail.append(f"{step['duration']:.1f}s")
        line = f"  {step.get('id')}: " + click.style(status, fg=_COLOURS.get(status))
        click.echo(line + (f"  ({', '.join(detail)})" if detail else ""))
        if step.get("error"):
            click.secho(f"      error: {step['error']}", fg="red")
        if step.get("reason"):
            click.echo(f"      reason: {step['reason']}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
