"""MCP servers users already declared for other clients: a `.mcp.json` file (the format
Claude Code, Cursor and LM Studio's mcp.json share), read into lmflow's server settings.

`${NAME}` in a value becomes the template `{{ env.NAME }}`, so the value is read from the
environment when a run starts and masked in its log like any `env.*` value of a workflow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .spec.model import HttpServer, McpServer, StdioServer

MCP_JSON = ".mcp.json"
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
