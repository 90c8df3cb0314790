"""MCP servers users already declared for other clients: a `.mcp.json` file (the format
Claude Code, Cursor and LM Studio's mcp.json share), read into lmflow's server settings,
whole (`lmflow serve --servers`) or one by name (`mcp_servers: {fs: {from: lmstudio}}`).

`${NAME}` in a value becomes the template `{{ env.NAME }}`, so the value is read from the
environment when a run starts and masked in its log like any `env.*` value of a workflow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .model import HttpServer, McpServer, StdioServer
from .schema import did_you_mean

MCP_JSON = ".mcp.json"
SOURCES = ("lmstudio", "project")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_mcp_json(path: Path) -> dict[str, McpServer]:
    """The servers of an `mcpServers` file by name; a file that is not one is exit 2."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"{path} is not JSON: {error}", hint='write {"mcpServers": {"name": {...}}}'
        ) from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigurationError(
            f"{path} has no `mcpServers` object",
            hint='write {"mcpServers": {"name": {"command": "...", "args": []}}}',
        )
    return {name: _server(path, str(name), entry) for name, entry in servers.items()}


def source_file(source: str, workflow: Path) -> Path | None:
    """`lmstudio`: LM Studio's ~/.lmstudio/mcp.json; `project`: the nearest .mcp.json at or
    above the workflow's folder (None when there is none)."""
    if source == "lmstudio":
        return Path.home() / ".lmstudio" / "mcp.json"
    folder = workflow.resolve().parent
    return next((f / MCP_JSON for f in (folder, *folder.parents) if (f / MCP_JSON).is_file()), None)


def imported_server(source: str, name: str, workflow: Path) -> McpServer:
    """The server `name` of the file `source` names, for the workflow at `workflow`; a file
    that is missing or does not declare it is exit 2, with the names it does declare."""
    path = source_file(source, workflow)
    if path is None or not path.is_file():
        where = path or f"{MCP_JSON} in {workflow.resolve().parent} or above"
        raise ConfigurationError(
            f"server {name!r} is to come from {where}, which does not exist",
            hint="declare the server there, or here with `command:` or `url:`",
        )
    servers = read_mcp_json(path)
    if name not in servers:
        suggestion = did_you_mean(name, list(servers))
        raise ConfigurationError(
            f"{path} declares no server {name!r}" + (f"; {suggestion}" if suggestion else ""),
            hint=f"servers in it: {', '.join(servers) or 'none'}",
        )
    return servers[name]


def _server(path: Path, name: str, entry: Any) -> McpServer:
    if isinstance(entry, dict) and isinstance(entry.get("command"), str):
        return StdioServer(
            name,
            _templated(entry["command"]),
            tuple(_templated(str(arg)) for arg in entry.get("args") or ()),
            env=_templated_map(entry.get("env")),
            cwd=_templated(entry["cwd"]) if isinstance(entry.get("cwd"), str) else None,
        )
    if isinstance(entry, dict) and isinstance(entry.get("url"), str):
        return HttpServer(name, _templated(entry["url"]), _templated_map(entry.get("headers")))
    raise ConfigurationError(
        f"{path}: server {name!r} has neither a `command` nor a `url`",
        hint='a stdio server needs "command" (and "args"); an HTTP server needs "url"',
    )


def _templated(value: str) -> str:
    return _VARIABLE.sub(r"{{ env.\1 }}", value)


def _templated_map(values: Any) -> Mapping[str, str]:
    if not isinstance(values, dict):
        return {}
    return {str(key): _templated(str(value)) for key, value in values.items()}
