"""`lmflow run`: run a workflow; outputs on stdout, progress on stderr."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from ..errors import EXIT_OK, EXIT_STEP_FAILED
from ..spec import load_workflow
from ._console import ConsoleView


@click.command("run")
@click.argument("workflow_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-i",
    "--input",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input value (repeatable).",
)
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A YAML or JSON file of inputs; -i values override it.",
)
@click.option(
    "--base-url",
    help="LM Studio server (default: LMFLOW_BASE_URL, the workflow's "
    "lmstudio.base_url, http://localhost:1234).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Also show tool results and answers.")
@click.option(
    "--log",
    "log_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the events here instead of .lmflow/runs/<run-id>/events.jsonl.",
)
@click.option("--no-log", is_flag=True, help="Write no run log.")
@click.option("--require-loaded", is_flag=True, help="Fail when a model is not loaded.")
@click.option("--load", "load_models", is_flag=True, help="Load unloaded models up front.")
@click.option("--refresh", is_flag=True, help="Ignore the cached model list.")
@click.option(
    "--cache-ttl",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds the cached model list stays fresh (default 60).",
)
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
) -> int:
    """Run WORKFLOW_FILE against LM Studio and the MCP servers it declares.

    Exit code 0 when every step succeeded, 1 when a step failed, 2 for an invalid workflow
    or input, 3 when LM Studio, a model or an MCP server is not ready (or a replayed
    cassette lacks a request), 130 on Ctrl-C.

    \b
    lmflow run wf.yaml --record cassettes/wf.yaml   # save the exchanges for tests
    lmflow run wf.yaml --replay cassettes/wf.yaml   # run from them, no LM Studio
    """
    from ..runtime import RunOptions, read_inputs, run_workflow

    workflow = load_workflow(workflow_file)
    options = RunOptions(
        base_url=base_url,
        log_path=log_path,
        write_log=not no_log,
        require_loaded=require_loaded,
        load=load_models,
        refresh=refresh,
        cache_ttl=cache_ttl,
        sinks=(ConsoleView(0 if quiet else 2 if verbose else 1),),
        record=record,
        replay=replay,
        rerecord=rerecord,
        live_tools=live_tools,
    )
    result = asyncio.run(run_workflow(workflow, read_inputs(inputs_file, pairs), options))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        for name, value in result.outputs.items():
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value, ensure_ascii=False, default=str)
            )
            click.echo(f"{name}: {text}" if len(result.outputs) > 1 else text)
    return EXIT_OK if result.status == "succeeded" else EXIT_STEP_FAILED
