"""`lmflow serve`: every valid workflow, a local agent, the model list and the validator as
tools of an MCP server, over stdio (default) or streamable HTTP (docs/serve.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigurationError, WorkflowInvalidError
from . import _options as options
from .validate import workflow_files

if TYPE_CHECKING:
    from ..serve import ServeSettings


@click.command("serve")
@click.argument("targets", nargs=-1, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--http",
    "http",
    metavar="HOST:PORT",
    help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio.",
)
@click.option(
    "--token-env",
    metavar="NAME",
    help="With --http: every request must carry `Authorization: Bearer $NAME` (required "
    "for an address other than loopback).",
)
@click.option(
    "--servers",
    "servers_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="MCP servers the `agent` tool may use: a workflow file (its servers, models and "
    "LM Studio settings) or a .mcp.json (default: .mcp.json in the serve directory).",
)
@click.option(
    "--replay",
    type=click.Path(path_type=Path, exists=True),
    metavar="CASSETTE",
    help="Answer every run from this cassette, or from DIR/<workflow name>.yaml for a "
    "directory (for tests).",
)
@options.base_url
def command(
    targets: tuple[Path, ...],
    http: str | None,
    token_env: str | None,
    servers_file: Path | None,
    replay: Path | None,
    base_url: str | None,
) -> int:
    """Serve the workflows in TARGETS (files or directories; default: the current one) as MCP
    tools, with `agent`, `models` and `validate`.

    \b
    Runs write their logs to the serve directory's .lmflow/runs (the first directory
    given, else the current one). Logs go to stderr: in stdio mode stdout is the protocol.
    \b
    claude mcp add lmflow -- lmflow serve /path/to/workflows
    """
    from .. import signals
    from ..api import RunOptions, load_workflow
    from ..serve import LmflowTools, serve_http, serve_stdio, served

    targets = targets or (Path("."),)
    directory = next((t for t in targets if t.is_dir()), Path("."))
    address = _address(http, token_env) if http else None
    RunOptions(base_url=base_url, replay=replay)  # a conflict is a command-line mistake: exit 2
    workflows = []
    for path in workflow_files(targets):
        try:
            workflows.append(load_workflow(path))
        except WorkflowInvalidError as error:
            _report(f"not served: {error.message}")
            for problem in error.problems:
                _report(problem.format())  # type: ignore[attr-defined]
    settings = _settings(directory, servers_file, base_url, replay)
    tools = LmflowTools(served(workflows, _report), settings, _report)
    names = ", ".join(tools.workflows) or "no workflows"
    where = f"http://{address[0]}:{address[1]}/mcp" if address else "stdio"
    _report(f"lmflow serve: {names} (+ agent, models, validate) on {where}")
    if address is None:
        signals.run(serve_stdio(tools))
    else:
        signals.run(serve_http(tools, *address))
    return 0


def _settings(
    directory: Path, servers_file: Path | None, base_url: str | None, replay: Path | None
) -> ServeSettings:
    from ..api import load_workflow
    from ..serve import ServeSettings
    from ..spec.model import McpServer
    from ..spec.server_files import MCP_JSON, read_mcp_json

    default = directory / MCP_JSON
    servers_file = servers_file or (default if default.is_file() else None)
    servers: dict[str, McpServer] = {}
    base = None
    if servers_file is not None and servers_file.suffix == ".json":
        servers = read_mcp_json(servers_file)
    elif servers_file is not None:
        base = load_workflow(servers_file)
    return ServeSettings(
        runs_dir=directory / ".lmflow" / "runs",
        base_url=base_url,
        replay=replay,
        servers=servers,
        agent_base=base,
    )


def _address(http: str, token_env: str | None) -> tuple[str, int, str | None]:
    """(host, port, token) from `--http HOST:PORT` and `--token-env NAME`."""
    from ..lmstudio_server import is_loopback

    host, sep, port_text = http.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigurationError(
            f"--http {http!r} is not HOST:PORT", hint="e.g. --http 127.0.0.1:8765"
        )
    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigurationError(
                f"--token-env {token_env}: the variable is not set",
                hint=f"export {token_env}=<a long random secret> before starting serve",
            )
    elif not is_loopback(f"http://{http}"):
        raise ConfigurationError(
            f"--http {http}: serving beyond this machine needs a token",
            hint="pass --token-env NAME (a variable holding the bearer token clients send)",
        )
    return host, int(port_text), token


def _report(message: str) -> None:
    click.echo(message, err=True)
