"""`lmflow tools`: start a workflow's MCP servers and list what each offers."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..spec import load_workflow
from ..toolcheck import describe_arguments
from . import _options as options


@click.command("tools")
@click.argument("workflow_file", type=click.Path(path_type=Path, dir_okay=False))
@options.inputs
@options.as_json
def command(
    workflow_file: Path, pairs: tuple[str, ...], inputs_file: Path | None, as_json: bool
) -> int:
    """List every tool of every MCP server WORKFLOW_FILE declares, with its arguments and
    description (`name?: type` is optional).

    This is how to find what a step may list under `tools:` or call with `tool:`.
    """
    from .. import signals
    from ..runtime import list_tools, read_inputs

    workflow = load_workflow(workflow_file)
    found = signals.run(list_tools(workflow, read_inputs(inputs_file, pairs)))
    if as_json:
        payload = {
            server: [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "arguments": describe_arguments(tool.input_schema),
                    "input_schema": tool.input_schema,
                }
                for tool in tools
            ]
            for server, tools in found.items()
        }
        click.echo(json.dumps(payload, indent=2))
        return 0
    if not found:
        click.echo("the workflow declares no MCP servers")
    for server, tools in found.items():
        click.secho(f"{server} ({len(tools)} tools)", bold=True)
        for tool in tools:
            lines = tool.description.strip().splitlines()
            summary = f"  {lines[0]}" if lines else ""
            click.echo(f"  {server}.{tool.name}({describe_arguments(tool.input_schema)}){summary}")
    return 0
