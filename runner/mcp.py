"""MCP server connections for one run, on the `mcp` SDK 2.x.

`McpSessions` starts every server a run needs once, before the first step, lists each
server's tools completely, and closes them all when the run ends, however it ends. Steps
see the tools through `McpSessions.toolbox`, a `runner.chat.Toolbox` whose tool names the
OpenAI function-name rules accept.

Each connection lives in a task of its own. The SDK's transports run task groups inside
the task that opened the connection, and a failing transport (an HTTP server that went
away) cancels that task: kept apart, such a failure ends one connection, not the step or
the run that happened to be waiting on it.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import anyio
from anyio.abc import Process, TaskGroup, TaskStatus
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CONNECTION_CLOSED, Prompt, Tool

from .chat import ChatModel, ToolResult, ToolSpec
from .errors import MCPServerError
from .mcp_content import prompt_result, resource_result, tool_result
from .mcp_handlers import EventSink, ServerHandlers
from .mcp_oauth import LoginFailed, LoginRequired, OAuthRun, http_auth
from .mcp_sampling import ModelFor
from .results import capped
from .server_prompts import PROMPT_GETTER
from .spec.model import (
    DEFAULT_MAX_RESULT_CHARS,
    AllowList,
    HttpServer,
    McpServer,
    StdioServer,
    ToolFilter,
    thawed,
)
from .stdio_server import stdio_transport

# The classic initialize handshake: every server speaks it, 1.x and 2.x alike. "auto" would
# first probe the 2026-07-28 protocol, and a 1.x server logs a traceback for each probe.
PROTOCOL_MODE = "legacy"
STDERR_TAIL_LINES = 20
_STDERR_TAIL_BYTES = 8192
_MAX_LIST_PAGES = 1000
READ_RESOURCE = "read_resource"
RESOURCE_READER = Tool(
    name=READ_RESOURCE,
    description=(
        "Read a resource of this MCP server by its URI, e.g. a resource link that a tool "
        "result named (a tool lmflow adds to servers that offer resources)."
    ),
    input_schema={
        "type": "object",
        "properties": {"uri": {"type": "string", "description": "The resource's URI."}},
        "required": ["uri"],
    },
)
_CLOSED_MESSAGE = "Connection closed"
"""The SDK's message when the connection itself is gone. It uses the same code, -32000, for
a request that failed on a connection that lives on (an SSE stream that broke, an event
over the size limit): those keep their message and are tool errors."""

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NOT_IN_FUNCTION_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_COMMAND_NOT_FOUND = "command not found: "


@dataclass
class _Connection:
    """One running server. `alive` turns false as soon as the connection starts to close."""

    name: str
    server: McpServer
    stderr_path: Path | None
    client: Client | None = None
    handlers: ServerHandlers | None = None
    tools: list[Tool] = field(default_factory=list)
    reads_resources: bool = False
    """Its tools include lmflow's `read_resource` (the server has resources)."""
    alive: bool = False
    failure: str | None = None


class McpSessions:
    """The MCP servers of one run: `async with McpSessions(servers) as sessions: ...`.

    `servers` maps a name to a server whose fields are already rendered. Entering starts
    every server (concurrently, each within its `startup_timeout`) and lists its tools; a
    server that will not start raises `MCPServerError` after the others are closed again.
    Leaving closes every server, also on an exception or a cancellation, with everything it
    started in its process group and session (runner/stdio_server.py).
    Stdio servers write their stderr to `<log_dir>/mcp-<name>.stderr.log` (a temporary
    directory, removed at the end, when `log_dir` is None): never to the terminal.

    `redact` masks secrets in every message this class writes (a command line, URL or
    stderr tail may hold a value rendered from `{{ env.X }}`, and errors reach the terminal)
    and in the stderr logs, as each line is written.

    `started` holds stdio server processes spawned earlier (`runtime.early_servers`), so
    they boot while the run checks its models; the sessions attach to them.

    What servers send on their own (progress, log messages, requests to the client) is
    answered by runner/mcp_handlers.py; its events go to `emit` (the run log's). A server's
    `roots` are relative to `workflow_dir`. A server with `sampling` settings is answered by
    `chat`, with the model `model_for` gives for the calling step (runner/mcp_sampling.py).
    HTTP servers with `oauth:` settings log in as `oauth` says (runner/mcp_oauth.py): in a
    run, with stored tokens only.
    """

    def __init__(
        self,
        servers: Mapping[str, McpServer],
        *,
        log_dir: Path | None = None,
        redact: Callable[[str], str] | None = None,
        started: Mapping[str, Process] | None = None,
        on_ready: Callable[[str], None] | None = None,
        emit: EventSink | None = None,
        workflow_dir: Path | None = None,
        chat: ChatModel | None = None,
        model_for: ModelFor | None = None,
        oauth: OAuthRun | None = None,
    ) -> None:
        self._servers = dict(servers)
        self._oauth = oauth or OAuthRun()
        self._on_ready = on_ready  # told each server's name once its handshake is done
        self._chat = chat
        self._model_for = model_for
        self._log_dir = log_dir
        self._emit = emit
        self._workflow_dir = workflow_dir
        self._redact = redact or _unchanged
        self._started = dict(started or {})
        self._connections: dict[str, _Connection] = {}
        self._closing = anyio.Event()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> McpSessions:
        stderr_dir = self._log_dir
        if stderr_dir is None:
            stderr_dir = Path(tempfile.mkdtemp(prefix="lmflow-mcp-"))
            self._stack.callback(shutil.rmtree, stderr_dir, ignore_errors=True)
        else:
            stderr_dir.mkdir(parents=True, exist_ok=True)
        try:
            owners = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(self._closing.set)
            failures: dict[str, str] = {}
            fixes: dict[str, str] = {}
            async with anyio.create_task_group() as starters:
                for name, server in self._servers.items():
                    stderr = stderr_dir / f"mcp-{name}.stderr.log"
                    connection = _Connection(
                        name, server, stderr if isinstance(server, StdioServer) else None
                    )
                    if connection.stderr_path is not None:
                        connection.stderr_path.write_text("")  # appended to from here on
                    self._connections[name] = connection
                    starters.start_soon(self._start, owners, connection, failures, fixes)
            if failures:
                # In declaration order, not in the order the starts happened to fail.
                failed = [failures[n] for n in self._servers if n in failures]
                hint = "; ".join(fixes[n] for n in self._servers if n in fixes)
                raise MCPServerError("\n".join(failed), hint=hint or _start_hint(failed))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Not handed the exception: the owners' task group would wrap it in a group.
        await self._stack.aclose()

    def tools(self, server: str) -> list[Tool]:
        """Every tool the server offers that lmflow can call (all pages, the newest list
        when the server said it changed), as the SDK describes them."""
        return list(self._connection(server).tools)

    def toolbox(
        self,
        servers: Sequence[str],
        allow: AllowList = None,
        limits: Mapping[str, int] | None = None,
    ) -> McpToolbox:
        """The tools of `servers` a step may call, limited to `allow` when it is given;
        `limits` are the result characters the model gets, per server (see `McpToolbox`).

        An `allow` entry is `tool` (that tool on each listed server that has it) or
        `server.tool`; `ToolFilter(read_only=True)` keeps the tools marked read-only. An
        entry or a filter that matches nothing raises `MCPServerError`: build every step's
        toolbox before the first step runs so such a workflow stops before it starts.
        """
        return build_toolbox(self, servers, allow, limits)

    async def prompts(self, server: str) -> list[Prompt]:
        """Every prompt the server offers (all pages; none when it has no prompts)."""
        client = self._connection(server).client
        if client is None or client.server_capabilities.prompts is None:
            return []
        prompts: list[Prompt] = []
        cursor: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            try:
                page = await client.list_prompts(cursor=cursor)
            except MCPError as exc:
                raise MCPServerError(
                    self._redact(f"MCP server {server!r} did not list its prompts: {_reason(exc)}")
                ) from exc
            prompts.extend(page.prompts)
            cursor = page.next_cursor
            if not cursor:
                return prompts
        raise MCPServerError(
            f"the prompt list of {server!r} did not end after {_MAX_LIST_PAGES} pages"
        )

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Call one tool (or fetch a prompt: `PROMPT_GETTER`, runner/server_prompts.py).
        Errors of the call come back as an `is_error` result; a server that is gone raises
        `MCPServerError`."""
        connection = self._connection(server)
        if not connection.alive or connection.client is None:
            raise self._stopped(connection)
        assert connection.handlers is not None
        timeout = connection.server.timeout
        result: ToolResult | None = None
        # Our own deadline, not the SDK's read timeout: progress may move it (abandoning the
        # call sends the server notifications/cancelled all the same).
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as deadline:
            extend = deadline if connection.server.progress_extends_timeout else None
            try:
                with connection.handlers.calling():
                    result = await self._send(connection, tool, arguments, extend)
            except MCPError as exc:
                if _connection_gone(exc) or not connection.alive:
                    raise self._stopped(connection, exc) from exc
                text = f"{_called(tool, arguments)} of MCP server {server!r} failed: {exc.message}"
                return ToolResult(self._redact(f"{text} (MCP error {exc.code})"), is_error=True)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                raise self._stopped(connection, exc) from exc
            except RuntimeError as exc:
                # The SDK's check of structured content against the tool's output schema, or
                # a client that closed under the call.
                if not connection.alive:
                    raise self._stopped(connection, exc) from exc
                text = f"{_called(tool, arguments)} of MCP server {server!r}: {exc}"
                return ToolResult(self._redact(text), is_error=True)
        if result is None:  # the deadline passed
            text = (
                f"{_called(tool, arguments)} of MCP server {server!r} did not answer within "
                f"{timeout:g}s"
            )
            return ToolResult(self._redact(text), is_error=True)
        return result

    async def _send(
        self,
        connection: _Connection,
        tool: str,
        arguments: Mapping[str, Any],
        extend: anyio.CancelScope | None,
    ) -> ToolResult:
        """One tool call, a read of a resource through lmflow's own `read_resource`, or a
        prompt fetch."""
        assert connection.client is not None and connection.handlers is not None
        content_dir = self._log_dir / "mcp-content" if self._log_dir is not None else None
        if tool == PROMPT_GETTER:
            prompt = await connection.client.get_prompt(
                str(arguments["name"]), dict(arguments.get("arguments") or {}) or None
            )
            return prompt_result(prompt, content_dir)
        if tool == READ_RESOURCE and connection.reads_resources:
            uri = arguments.get("uri")
            if not isinstance(uri, str) or not uri:
                return ToolResult(f"{READ_RESOURCE} needs a `uri` (a string)", is_error=True)
            return resource_result(await connection.client.read_resource(uri), content_dir)
        progress = connection.handlers.progress(tool, extend, connection.server.timeout)
        result = await connection.client.call_tool(
            tool, thawed(dict(arguments)), progress_callback=progress
        )
        return tool_result(result, content_dir)

    def _connection(self, server: str) -> _Connection:
        try:
            return self._connections[server]
        except KeyError:
            raise MCPServerError(f"MCP server {server!r} was not started for this run") from None

    async def _start(
        self,
        owners: TaskGroup,
        connection: _Connection,
        failures: dict[str, str],
        fixes: dict[str, str],
    ) -> None:
        """Start one server in its own task, within its start-up timeout; record a failure
        (and its fix, for a server that needs a login)."""
        timeout = connection.server.startup_timeout
        if self._oauth.login is not None:
            timeout += _login_timeout(connection.server)
        try:
            with anyio.move_on_after(timeout) as deadline:
                await owners.start(self._serve, connection)
        except Exception as exc:
            failures[connection.name] = self._describe_failure(connection, _reason(exc))
            fix = _login_fix(exc)
            if fix is not None:
                fixes[connection.name] = fix
            return
        if deadline.cancelled_caught:
            reason = (
                f"no answer to the handshake within {timeout:g}s (startup_timeout in its settings)"
            )
            failures[connection.name] = self._describe_failure(connection, reason)
        elif self._on_ready is not None:
            self._on_ready(connection.name)

    async def _serve(
        self, connection: _Connection, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own one connection from its start to its end.

        Failures before `started` go to the starter; a failure later ends this connection
        only, and is kept for the next call to report.
        """
        started = False
        try:
            async with AsyncExitStack() as stack:
                connection.handlers = self._handlers(connection)
                client = await stack.enter_async_context(await self._client(connection, stack))
                connection.reads_resources = await _offers_resources(client)
                connection.tools = await self._tools_of(connection, client)
                connection.client = client
                connection.alive = True
                task_status.started()
                started = True
                try:
                    await self._closing.wait()
                finally:
                    connection.alive = False
        except Exception as exc:
            if not started:
                raise
            connection.failure = _reason(exc)

    def _handlers(self, connection: _Connection) -> ServerHandlers:
        async def refresh_tools() -> None:
            if connection.client is not None:
                connection.tools = await self._tools_of(connection, connection.client)

        return ServerHandlers(
            connection.name,
            connection.server,
            emit=self._emit,
            redact=self._redact,
            log_file=connection.stderr_path,
            roots=self._roots(connection.server),
            tools_changed=refresh_tools,
            chat=self._chat,
            model_for=self._model_for,
        )

    @staticmethod
    async def _tools_of(connection: _Connection, client: Client) -> list[Tool]:
        """The server's callable tools, and lmflow's `read_resource` when it has resources
        (and no tool of that name of its own)."""
        tools = await _list_callable_tools(client)
        if connection.reads_resources and all(tool.name != READ_RESOURCE for tool in tools):
            tools.append(RESOURCE_READER)
        else:
            connection.reads_resources = False
        return tools

    def _roots(self, server: McpServer) -> list[Path]:
        base = self._workflow_dir or Path.cwd()
        return [(base / root).resolve() for root in server.roots]

    async def _client(self, connection: _Connection, stack: AsyncExitStack) -> Client:
        server = connection.server
        assert connection.handlers is not None
        options = connection.handlers.client_options()
        if isinstance(server, HttpServer):
            auth = http_auth(connection.name, server, self._oauth)
            http = await stack.enter_async_context(
                create_mcp_http_client(headers=dict(server.headers), auth=auth)
            )
            transport = streamable_http_client(
                server.url, http_client=http, max_sse_event_size=server.max_message_bytes
            )
            return Client(transport, mode=PROTOCOL_MODE, **options)
        assert connection.stderr_path is not None
        stdio = stdio_transport(
            server, connection.stderr_path, self._redact, self._started.pop(connection.name, None)
        )
        return Client(stdio, mode=PROTOCOL_MODE, **options)

    def _stopped(self, connection: _Connection, exc: BaseException | None = None) -> MCPServerError:
        if connection.failure is not None:
            reason = connection.failure
        elif self._closing.is_set():
            reason = "the run already closed it"
        else:
            reason = _reason(exc) if exc is not None else "the connection closed"
        return MCPServerError(self._describe_failure(connection, reason, verb="stopped"))

    def _describe_failure(self, connection: _Connection, reason: str, verb: str = "") -> str:
        """A message naming the server, how it was started, and the end of its stderr."""
        server = connection.server
        verb = verb or "would not start"
        lines = [f"MCP server {connection.name!r} {verb}: {reason}"]
        if isinstance(server, StdioServer):
            lines.append(f"  command: {shlex.join([server.command, *server.args])}")
            if server.cwd:
                lines.append(f"  cwd: {server.cwd}")
        else:
            lines.append(f"  url: {server.url}")
        if connection.stderr_path is not None:
            tail = _tail(connection.stderr_path)
            where = f" ({connection.stderr_path})" if self._log_dir is not None else ""
            if tail:
                lines.append(f"  last lines of its stderr{where}:")
                lines.extend(f"    {line}" for line in tail)
            else:
                lines.append("  (it wrote nothing to stderr)")
        return self._redact("\n".join(lines))


class ToolSource(Protocol):
    """What a toolbox needs: each server's tool list, and a way to call a tool. Live sessions
    are one; a cassette (runner/replay.py) is another."""

    def tools(self, server: str) -> list[Tool]: ...

    async def call_tool(
        self, server: str, tool: str, arguments: Mapping[str, Any]
    ) -> ToolResult: ...


def build_toolbox(
    source: ToolSource,
    servers: Sequence[str],
    allow: AllowList = None,
    limits: Mapping[str, int] | None = None,
) -> McpToolbox:
    """The toolbox of `McpSessions.toolbox`, over any tool source: a replayed run offers
    exactly the names, and reports exactly the allow-list errors, of a live one."""
    offered = [(server, tool) for server in dict.fromkeys(servers) for tool in source.tools(server)]
    if isinstance(allow, ToolFilter):
        offered = _filtered(offered, allow, servers)
    elif allow is not None:
        offered = _allowed(offered, allow, servers)
    return McpToolbox(source, _exposed_names(offered), limits)


class McpToolbox:
    """The tools one step may call, under names the OpenAI function-name rules accept.

    A tool keeps its own name when no other server of the step offers the same one;
    otherwise it is `server__tool`, so both stay reachable. Names that are not valid
    function names are sanitized, and shortened with a hash suffix when too long.

    A result longer than its server's entry in `limits` (default `DEFAULT_MAX_RESULT_CHARS`)
    is cut for the model; the whole text stays in the result's `full_text`.
    """

    def __init__(
        self,
        sessions: ToolSource,
        routes: Mapping[str, tuple[str, Tool]],
        limits: Mapping[str, int] | None = None,
    ) -> None:
        self._sessions = sessions
        self._routes = dict(routes)
        self._limits = dict(limits or {})
        self._specs = tuple(
            ToolSpec(name, tool.description or tool.title or "", tool.input_schema)
            for name, (_, tool) in self._routes.items()
        )

    def specs(self) -> Sequence[ToolSpec]:
        return self._specs

    def offered(self) -> list[tuple[str, Tool]]:
        """Each tool on offer with its server, as the server describes it."""
        return list(self._routes.values())

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        found = self._routes.get(name)
        if found is None:
            available = ", ".join(self._routes) or "none"
            return ToolResult(
                f"unknown tool {name!r}; the available tools are: {available}", is_error=True
            )
        server, tool = found
        result = await self._sessions.call_tool(server, tool.name, arguments)
        return capped(result, self._limits.get(server, DEFAULT_MAX_RESULT_CHARS))


def function_name(label: str, *, salted: bool = False) -> str:
    """`label` as an OpenAI function name: itself when valid, else sanitized and shortened.

    `salted` forces a hash suffix, to part names that sanitizing made equal.
    """
    if not salted and _FUNCTION_NAME.match(label):
        return label
    cleaned = _NOT_IN_FUNCTION_NAME.sub("_", label)
    if not salted and 0 < len(cleaned) <= 64:
        return cleaned
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"{cleaned[:55]}_{digest}"


def _exposed_names(offered: Sequence[tuple[str, Tool]]) -> dict[str, tuple[str, Tool]]:
    counts = Counter(tool.name for _, tool in offered)
    routes: dict[str, tuple[str, Tool]] = {}
    for server, tool in offered:
        label = tool.name if counts[tool.name] == 1 else f"{server}__{tool.name}"
        name = function_name(label)
        if name in routes:
            name = function_name(label, salted=True)
        routes[name] = (server, tool)
    return routes


def _allowed(
    offered: Sequence[tuple[str, Tool]], allow: Sequence[str], servers: Sequence[str]
) -> list[tuple[str, Tool]]:
    """The offered tools an allow-list keeps; an entry that matches none is an error."""
    keys = [(tool.name, f"{server}.{tool.name}") for server, tool in offered]
    missing = [entry for entry in allow if not any(entry in key for key in keys)]
    if missing:
        known = [qualified for _, qualified in keys]
        closest = {
            m: difflib.get_close_matches(m, known + [n for n, _ in keys], n=3) for m in missing
        }
        hints = [f"{m!r}: did you mean {', '.join(c)}?" for m, c in closest.items() if c]
        raise MCPServerError(
            f"tools allow-list: no MCP server of the step ({', '.join(servers) or 'none'}) "
            f"offers {', '.join(repr(m) for m in missing)}",
            hint="; ".join([*hints, "available: " + (", ".join(known) or "none")]),
        )
    wanted = set(allow)
    return [item for item, key in zip(offered, keys, strict=True) if wanted.intersection(key)]


def _filtered(
    offered: Sequence[tuple[str, Tool]], tool_filter: ToolFilter, servers: Sequence[str]
) -> list[tuple[str, Tool]]:
    """The offered tools a filter keeps; a filter that keeps none is an error (the step
    would have no tools, which `tools:` did not ask for)."""
    if not tool_filter.read_only:
        return list(offered)
    kept = [(server, tool) for server, tool in offered if _read_only(tool)]
    if not kept:
        named = ", ".join(servers) or "none"
        raise MCPServerError(
            f"tools: {{read_only: true}}: no MCP server of the step ({named}) marks any tool "
            "read-only (readOnlyHint)",
            hint="name the tools instead: tools: [tool, server.tool]",
        )
    return kept


def _read_only(tool: Tool) -> bool:
    return tool.annotations is not None and tool.annotations.read_only_hint is True


async def _list_callable_tools(client: Client) -> list[Tool]:
    """Every page of the tool list (the SDK returns one page per call), without the tools
    that can only be called as tasks: lmflow does not call tasks, so it must not offer them."""
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(tool for tool in page.tools if not _task_only(tool))
        cursor = page.next_cursor
        if not cursor:
            return tools
    raise RuntimeError(f"the tool list did not end after {_MAX_LIST_PAGES} pages")


async def _offers_resources(client: Client) -> bool:
    """Whether the server lists a resource or a resource template. Not its capability
    alone: the SDK's servers declare it with no resource at all."""
    if client.server_capabilities.resources is None:
        return False
    try:
        listed = await client.list_resources()
        return bool(listed.resources) or bool(
            (await client.list_resource_templates()).resource_templates
        )
    except MCPError:
        return False


def _task_only(tool: Tool) -> bool:
    return tool.execution is not None and tool.execution.task_support == "required"


def _called(tool: str, arguments: Mapping[str, Any]) -> str:
    """What a call asked for, in a message: a tool, or a prompt."""
    return f"prompt {arguments.get('name')!r}" if tool == PROMPT_GETTER else f"tool {tool!r}"


def _unchanged(text: str) -> str:
    return text


def _start_hint(failures: Sequence[str]) -> str | None:
    """How to fix a command that is not there; other failures get the error's default hint
    (their stderr is in the message)."""
    first_lines = [failure.split("\n", 1)[0] for failure in failures]
    missing = [
        line.split(_COMMAND_NOT_FOUND, 1)[1] for line in first_lines if _COMMAND_NOT_FOUND in line
    ]
    if not missing:
        return None
    return "; ".join(
        f"install {command!r} or give its full path in the server's `command:` (it is not on PATH)"
        for command in dict.fromkeys(missing)
    )


def _reason(exc: BaseException) -> str:
    """One line saying why: the innermost meaningful error of an exception group."""
    inner = getattr(exc, "exceptions", None)
    if inner:
        return "; ".join(dict.fromkeys(_reason(e) for e in inner))
    if isinstance(exc, NotADirectoryError):
        return f"working directory not found: {exc.filename} (check cwd in its settings)"
    if isinstance(exc, FileNotFoundError):
        return f"{_COMMAND_NOT_FOUND}{exc.filename or exc}"
    if isinstance(exc, (LoginRequired, LoginFailed)):
        return str(exc)
    if isinstance(exc, MCPError) and _connection_gone(exc):
        return "the server closed the connection (did it exit?)"
    if isinstance(exc, MCPError):
        return f"{exc.message} (MCP error {exc.code})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _login_fix(exc: BaseException) -> str | None:
    """The fix a `LoginRequired` anywhere in an exception (group) carries."""
    if isinstance(exc, LoginRequired):
        return exc.fix
    for inner in getattr(exc, "exceptions", ()):
        fix = _login_fix(inner)
        if fix is not None:
            return fix
    cause = exc.__cause__ or exc.__context__
    return _login_fix(cause) if cause is not None else None


def _login_timeout(server: McpServer) -> float:
    """The time a person has to log in, on top of the handshake's."""
    if isinstance(server, HttpServer) and server.oauth is not None:
        return server.oauth.login_timeout
    return 0.0


def _connection_gone(exc: MCPError) -> bool:
    """The connection itself is gone, not just one request on it (see `_CLOSED_MESSAGE`)."""
    return exc.code == CONNECTION_CLOSED and exc.message == _CLOSED_MESSAGE


def _tail(path: Path) -> list[str]:
    """The last lines of a log file, read through a handle of our own."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - _STDERR_TAIL_BYTES))
            data = file.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [line for line in lines if line.strip()][-STDERR_TAIL_LINES:]
