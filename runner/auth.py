"""`lmflow auth`: log in to one remote MCP server once, so that later runs find its token.

The server is one a workflow declares with `oauth:` settings, or a bare URL (a client
registered dynamically). The login is an ordinary connection to the server with a person
at the other end (runner/mcp_oauth.py's `LoopbackLogin`): the SDK discovers, registers and
exchanges the code, and the tokens land in the server's token file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .runlog import Redactor
from .spec.model import HttpServer, OAuth, Workflow


@dataclass(frozen=True)
class LoggedIn:
    """What `lmflow auth` tells the person: where the token is, and that it works."""

    server: str
    url: str
    token_file: Path
    tools: int


def server_to_log_in(
    target: str, workflow: Workflow | None, raw_inputs: Mapping[str, Any]
) -> tuple[HttpServer, Redactor]:
    """The server `target` names (rendered), and the redactor that knows the secrets its
    settings hold. Without a workflow `target` is the server's URL."""
    from .executor import render_servers
    from .runtime import RunOptions, prepare

    if workflow is None:
        if urlsplit(target).scheme not in ("http", "https"):
            raise ConfigurationError(
                f"{target!r} is neither a server URL nor, without a workflow, a server name",
                hint="give the workflow that declares it: `lmflow auth SERVER WORKFLOW`, "
                "or the server's URL: `lmflow auth https://host/mcp`",
            )
        return HttpServer(urlsplit(target).netloc, target, oauth=OAuth()), Redactor()
    declared = workflow.mcp_servers.get(target)
    if declared is None:
        names = ", ".join(workflow.mcp_servers) or "none"
        raise ConfigurationError(
            f"{workflow.path} declares no MCP server {target!r}",
            hint=f"its servers: {names}",
        )
    if not isinstance(declared, HttpServer) or declared.oauth is None:
        raise ConfigurationError(
            f"MCP server {target!r} of {workflow.path} has no `oauth:` settings: "
            "there is nothing to log in to",
            hint="an HTTP server that wants an OAuth login takes `oauth: true` (docs/mcp.md#oauth)",
        )
    run = prepare(workflow, raw_inputs, RunOptions(write_log=False))
    server = render_servers(workflow, [target], run.context)[target]
    assert isinstance(server, HttpServer)
    return server, run.log.redactor


async def log_in(
    server: HttpServer,
    *,
    workflow: Path | None,
    show: Callable[[str, bool], None],
    redactor: Redactor,
) -> LoggedIn:
    """Log in afresh (`show` is given the URL to open, and whether a browser opens it)
    and list the server's tools with the new token; a login that fails or times out raises
    `MCPServerError` (exit 3). Messages are masked by `redactor`, which learns every token."""
    from .mcp import McpSessions
    from .mcp_oauth import LoopbackLogin, OAuthRun, TokenFile, token_path

    assert server.oauth is not None
    TokenFile(server.url, on_secret=redactor.add).forget_tokens()  # a login, not a check
    async with LoopbackLogin(show, server.oauth.login_timeout) as login:
        oauth = OAuthRun(workflow, login=login, on_secret=redactor.add)
        sessions = McpSessions({server.name: server}, redact=redactor.text, oauth=oauth)
        async with sessions:
            tools = len(sessions.tools(server.name))
    return LoggedIn(server.name, server.url, token_path(server.url), tools)
