"""`lmflow agent`: the shared engine once, on a task given on the command line."""

from __future__ import annotations

from pathlib import Path

import click

from . import _options as options
from ._console import ConsoleView, print_result


@click.command("agent")
@click.argument("task")
@click.option("--model", "-m", help="Model id or alias (default: the --from file's default).")
@click.option(
    "--mcp",
    "use",
    multiple=True,
    metavar="NAME",
    help="A server whose tools the model may call (repeatable).",
)
@click.option(
    "--server",
    "server_specs",
    multiple=True,
    metavar="NAME=COMMAND",
    help="Declare a server inline: name='command args' or name=http://host/mcp.",
)
@click.option(
    "--from",
    "from_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Take servers, models and LM Studio settings from this workflow.",
)
@click.option("--system", help="A system prompt.")
@click.option(
    "--max-rounds",
    type=click.IntRange(1, 1000),
    help="LLM turns (default 10); the last offers no tools.",
)
@click.option(
    "--tool-choice",
    metavar="auto|none|required|TOOL",
    help="Force a tool call in the first round (required, or a tool's name), or offer none.",
)
@click.option("--temperature", type=click.FloatRange(0, 2), help="Sampling temperature.")
@click.option(
    "--max-tokens", type=click.IntRange(min=-1), help="Most tokens per model answer (-1: no limit)."
)
@click.option(
    "--output-schema",
    "schema_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A JSON Schema file (JSON or YAML): the answer must match it and is printed as JSON.",
)
@options.inputs
@options.model_check
@options.as_json
@options.quiet
@options.no_log
def command(
    task: str,
    model: str | None,
    use: tuple[str, ...],
    server_specs: tuple[str, ...],
    from_file: Path | None,
    system: str | None,
    max_rounds: int | None,
    tool_choice: str | None,
    temperature: float | None,
    max_tokens: int | None,
    schema_file: Path | None,
    pairs: tuple[str, ...],
    inputs_file: Path | None,
    base_url: str | None,
    refresh: bool,
    cache_ttl: float | None,
    require_loaded: bool,
    load_models: bool,
    as_json: bool,
    quiet: bool,
    no_log: bool,
) -> int:
    """Ask a model to do TASK, with the tools of the MCP servers named by --mcp.

    \b
    lmflow agent --server time='python -m mcp_server_time' --mcp time \\
                 --model qwen/qwen3-4b-2507 "What time is it in Tokyo?"
    """
    from .. import signals
    from ..runtime import (
        RunOptions,
        one_off_workflow,
        parse_server_option,
        read_inputs,
        read_output_schema,
        run_workflow,
    )
    from ..spec import load_workflow

    base = load_workflow(from_file) if from_file else None
    servers = dict(parse_server_option(spec) for spec in server_specs)
    workflow = one_off_workflow(
        task,
        model=model,
        servers=servers,
        use=use or tuple(servers),
        system=system,
        max_rounds=max_rounds,
        base=base,
        tool_choice=tool_choice,
        temperature=temperature,
        max_tokens=max_tokens,
        output_schema=read_output_schema(schema_file) if schema_file else None,
    )
    run_options = RunOptions(
        base_url=base_url,
        write_log=not no_log,
        require_loaded=require_loaded,
        load=load_models,
        refresh=refresh,
        cache_ttl=cache_ttl,
        sinks=(ConsoleView(0 if quiet else 1),),
    )
    raw_inputs = read_inputs(inputs_file, pairs)
    return print_result(signals.run(run_workflow(workflow, raw_inputs, run_options)), as_json)
