"""`lmflow run`: run a workflow; outputs on stdout, progress on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import LmflowError, ReplayMissError
from ..runlog import Sink
from ..spec import load_workflow
from . import _options as options
from ._console import print_result, progress_view

if TYPE_CHECKING:
    from ..dryrun import DryStep


@click.command("run")
@click.argument("workflow_file", type=click.Path(path_type=Path, dir_okay=False))
@options.inputs
@options.as_json
@options.quiet
@click.option("-v", "--verbose", is_flag=True, help="Also show tool results and answers.")
@click.option(
    "--log",
    "log_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the events here instead of .lmflow/runs/<run-id>/events.jsonl.",
)
@options.no_log
@options.model_check
@click.option(
    "--record",
    "record",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="CASSETTE",
    help="Save every model and tool exchange into this cassette (YAML).",
)
@click.option(
    "--replay",
    "replay",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="CASSETTE",
    help="Answer model requests and tool calls from this cassette: no LM Studio needed.",
)
@click.option("--rerecord", is_flag=True, help="Let --record replace an existing cassette.")
@click.option(
    "--live-tools", is_flag=True, help="With --replay: call the real MCP servers instead."
)
@click.option(
    "--otel",
    "otel",
    metavar="URL",
    help="Export the run's trace to this OTLP/HTTP endpoint (default: "
    "OTEL_EXPORTER_OTLP_ENDPOINT when set). Needs the otel extra.",
)
@click.option(
    "--resume",
    "resume",
    metavar="RUN_ID|last",
    help="Reuse the results of the steps that succeeded in that run, where nothing they "
    "depend on changed; run the rest.",
)
@click.option(
    "--answer",
    "answer_pairs",
    multiple=True,
    metavar="STEP=VALUE",
    help="The answer to an `ask:` step (repeatable), typed by the step: yes/no, text, or one "
    "of its choices. Without one, a terminal is asked; else the step's default is used.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print each step's rendered prompt or tool arguments and stop: no model is asked, "
    "no server started, no log written.",
)
def command(
    workflow_file: Path,
    pairs: tuple[str, ...],
    inputs_file: Path | None,
    base_url: str | None,
    as_json: bool,
    quiet: bool,
    verbose: bool,
    log_path: Path | None,
    no_log: bool,
    require_loaded: bool,
    load_models: bool,
    refresh: bool,
    cache_ttl: float | None,
    record: Path | None,
    replay: Path | None,
    rerecord: bool,
    live_tools: bool,
    resume: str | None,
    dry_run: bool,
    otel: str | None,
    answer_pairs: tuple[str, ...],
) -> int:
    """Run WORKFLOW_FILE against LM Studio and the MCP servers it declares.

    Exit code 0 when every step succeeded, 1 when a step failed, 2 for an invalid workflow
    or input, 3 when LM Studio, a model or an MCP server is not ready (or a replayed
    cassette lacks a request), 130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP.

    \b
    lmflow run wf.yaml --record cassettes/wf.yaml   # save the exchanges for tests
    lmflow run wf.yaml --replay cassettes/wf.yaml   # run from them, no LM Studio
    """
    from .. import signals
    from ..api import RunOptions, run_workflow
    from ..runtime import dry_run_workflow, key_values, read_inputs
    from ._ask import terminal_asker

    workflow = load_workflow(workflow_file)
    if dry_run:
        excluded = {"--record": record, "--replay": replay, "--resume": resume}
        given = [flag for flag, value in excluded.items() if value]
        if given:
            raise click.UsageError(f"--dry-run runs nothing: it cannot take {', '.join(given)}")
        print_dry_run(dry_run_workflow(workflow, read_inputs(inputs_file, pairs)))
        return 0
    with progress_view(quiet, verbose) as progress, tracing(otel) as traces:
        run_options = RunOptions(
            base_url=base_url,
            log_path=log_path,
            write_log=not no_log,
            require_loaded=require_loaded,
            load=load_models,
            refresh=refresh,
            cache_ttl=cache_ttl,
            sinks=(*progress, *traces),
            record=record,
            replay=replay,
            rerecord=rerecord,
            live_tools=live_tools,
            resume=resume,
            # typed later, by each step's type
            answers=key_values(answer_pairs, "--answer", "STEP=VALUE", "e.g. --answer go=yes"),
            asker=terminal_asker(progress),
        )
        raw_inputs = read_inputs(inputs_file, pairs)
        try:
            result = signals.run(run_workflow(workflow, raw_inputs, run_options))
        except ReplayMissError as error:
            if quiet:  # no step lines were shown: the error tells it all
                raise
            # The failed step's line above already showed the whole miss (closest request,
            # diff).
            headline = error.message.splitlines()[0]
            raise ReplayMissError(
                f"{headline} (what differs is shown above)", hint=error.hint
            ) from None
    return print_result(result, as_json)


def print_dry_run(steps: Sequence[DryStep]) -> None:
    """Each step with what it would send, indented under its title; stdout, so it can be
    piped or diffed."""
    for step in steps:
        click.secho(f"▶ {step.id}  {step.title}", bold=True)
        if step.for_each is not None:
            click.echo(f"    for_each: {step.for_each}")
        if step.condition is not None:
            click.echo(f"    if: {step.condition}")
        if step.error is not None:
            click.secho(f"    {step.error}", fg="yellow")
        if step.arguments is not None:
            click.echo(f"    with: {step.arguments}")
        texts = (("system", step.system), ("prompt", step.prompt), ("question", step.question))
        for label, text in texts:
            if text is not None:
                click.echo(f"    {label}:")
                click.echo("\n".join(f"      {line}" for line in text.splitlines() or [""]))
    click.echo(
        f"dry run: {len(steps)} step(s); nothing was sent to a model or a tool. "
        "<steps.…> and <item> stand for values known only during the run.",
        err=True,
    )


@contextlib.contextmanager
def tracing(url: str | None) -> Iterator[tuple[Sink, ...]]:
    """The OpenTelemetry sink when --otel or the standard variable asks for one; the trace
    is sent when the run is over, however it ended. Without the otel extra, --otel is an
    error and the variable (perhaps set for other programs) a note."""
    from ..otel import endpoint_from_environment, trace_sink

    if url is None and endpoint_from_environment() is None:
        yield ()
        return
    try:
        tracer = trace_sink(url)
    except LmflowError as error:  # the otel extra is not installed
        if url is not None:
            raise
        click.echo(f"note: {error.message}; the run is not traced\n  hint: {error.hint}", err=True)
        yield ()
        return
    try:
        yield (tracer,)
    finally:
        if not tracer.close():
            click.echo(f"warning: the trace was not exported: {tracer.failure}", err=True)
