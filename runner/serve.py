"""`lmflow serve`: workflows and the local agent as MCP tools, over stdio or streamable HTTP.

A thin face over the public API (runner/api.py): a tool call is one `run_workflow`, with
the run log's events turned into progress notifications. Nothing here prints: what serve
has to say goes to the `report` callback (stderr, from the command), since in stdio mode
stdout is the protocol.
"""

from __future__ import annotations

import contextlib
import hmac
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError

from . import api, serve_tools, signals
from .ask_step import Question, unanswered
from .errors import ConfigurationError, InputError, LmflowError, StepFailedError
from .runlog import Event
from .spec import Problem, check_file, parse_document, validate_document
from .spec.model import McpServer, Workflow

Report = Callable[[str], None]


@dataclass(frozen=True)
class ServeSettings:
    """What every served run shares."""

    runs_dir: Path
    """The serve directory's `.lmflow/runs`."""
    base_url: str | None = None
    replay: Path | None = None
    """A cassette every run replays, or a directory holding `<workflow name>.yaml` ones."""
    servers: Mapping[str, McpServer] = field(default_factory=dict)
    """The MCP servers the `agent` tool may use, by name."""
    agent_base: Workflow | None = None
    """A workflow whose servers, models and LM Studio settings `agent` takes."""

    def run_options(
        self,
        workflow_name: str,
        sink: Callable[[Event], None],
        stop_reason: Callable[[], str | None],
        asker: ClientAsker | None = None,
    ) -> api.RunOptions:
        replay = self.replay
        if replay is not None and replay.is_dir():
            replay = replay / f"{workflow_name}.yaml"
        return api.RunOptions(
            base_url=self.base_url,
            runs_dir=self.runs_dir,
            replay=replay,
            sinks=(sink,),
            stop_reason=stop_reason,
            asker=asker,
        )

    @property
    def agent_servers(self) -> list[str]:
        base = self.agent_base.mcp_servers if self.agent_base else {}
        return sorted({*base, *self.servers})


class Progress:
    """A run's finished steps as MCP progress notifications. The run log calls `sink` from
    inside the run; `forward` sends them in order on the request's own session (a no-op when
    the client gave no progress token)."""

    def __init__(self, session: ServerSession, total: int) -> None:
        self.session = session
        self.total = total
        self.done = 0
        self._send, self._receive = anyio.create_memory_object_stream[tuple[int, str]](math.inf)

    def sink(self, event: Event) -> None:
        if event.type == "step_finished" and "/" not in (event.step or ""):  # not a nested step
            self.done += 1
            self._send.send_nowait((self.done, f"step {event.step!r} {event.data['status']}"))

    def close(self) -> None:
        self._send.close()

    async def forward(self) -> None:
        async with self._receive:
            async for done, message in self._receive:
                await self.session.report_progress(done, self.total, message)


class ClientAsker:
    """An `ask:` step's question as an MCP elicitation to the client that called the tool:
    a form of one field, `answer`, typed by the step. Declining or cancelling fails the
    step."""

    def __init__(self, session: ServerSession, request_id: types.RequestId | None) -> None:
        self.session = session
        self.request_id = request_id

    @classmethod
    def of(cls, ctx: ServerRequestContext[Any]) -> ClientAsker | None:
        """The asker of a client that answers elicitations; None for one that does not, or
        whose connection cannot carry a request from the server (the 2026-07-28 protocol)."""
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.elicitation is None:
            return None
        if not ctx.session.can_send_request:
            return None
        return cls(ctx.session, ctx.request_id)

    async def __call__(self, question: Question) -> Any:
        schema = {
            "type": "object",
            "properties": {"answer": question.json_schema()},
            "required": ["answer"],
        }
        try:
            result = await self.session.elicit_form(question.text, schema, self.request_id)
        except MCPError as error:
            raise StepFailedError(
                f"the MCP client could not answer the question of step {question.step!r}: {error}"
            ) from None
        if result.action != "accept":
            raise StepFailedError(
                f"the MCP client {_ENDED[result.action]} the question of step {question.step!r}",
                hint="accept the question to go on; the run stops at an unanswered one",
            )
        if result.content is None or "answer" not in result.content:
            raise StepFailedError(
                f"the MCP client accepted the question of step {question.step!r} without an answer"
            )
        return result.content["answer"]


_ENDED = {"decline": "declined", "cancel": "cancelled"}


class LmflowTools:
    """The request handlers: list the tools, call one."""

    def __init__(
        self, workflows: Mapping[str, Workflow], settings: ServeSettings, report: Report
    ) -> None:
        self.workflows = dict(workflows)
        self.settings = settings
        self.report = report

    def server(self) -> Server[Any]:
        from . import __version__

        return Server(
            "lmflow",
            version=__version__,
            instructions="lmflow workflows for local LLMs (LM Studio), each a tool; `agent` "
            "hands a task to a local model with MCP tools.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = [serve_tools.workflow_tool(w) for w in self.workflows.values()]
        return types.ListToolsResult(
            tools=[*tools, *serve_tools.built_in_tools(self.settings.agent_servers)]
        )

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        built_in = {t.name: t for t in serve_tools.built_in_tools(self.settings.agent_servers)}
        try:
            if params.name in self.workflows:  # the run checks its inputs like -i values
                return await self._run(ctx, self.workflows[params.name], arguments)
            if params.name not in built_in:
                raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r}")
            serve_tools.check_arguments(built_in[params.name].input_schema, arguments)
            if params.name == serve_tools.AGENT:
                return await self._run(ctx, self._agent_workflow(arguments), {})
            if params.name == serve_tools.MODELS:
                catalog = await api.list_models(
                    self.settings.base_url, refresh=arguments.get("refresh", False)
                )
                return serve_tools.models_result(catalog)
            return serve_tools.problems_result(_problems(arguments["workflow"]))
        except LmflowError as error:
            return serve_tools.error_result(error)

    def _agent_workflow(self, arguments: Mapping[str, Any]) -> Workflow:
        """The one-step workflow of an `agent` call (arguments already checked)."""
        base = self.settings.agent_base
        if "model" not in arguments and (base is None or base.defaults.model is None):
            raise InputError(
                "input 'model' is required: serve has no default model",
                hint="pass a model id from the `models` tool, or start serve with --servers "
                "FILE whose workflow sets defaults.model",
            )
        return api.agent_workflow(
            arguments["task"],
            model=arguments.get("model"),
            servers=self.settings.servers,
            use=arguments.get("servers", ()),
            system=arguments.get("system"),
            max_rounds=arguments.get("max_rounds"),
            base=base,
            tool_choice=arguments.get("tool_choice"),
            temperature=arguments.get("temperature"),
            max_tokens=arguments.get("max_tokens"),
            output_schema=arguments.get("output_schema"),
        )

    async def _run(
        self, ctx: ServerRequestContext[Any], workflow: Workflow, arguments: Mapping[str, Any]
    ) -> types.CallToolResult:
        """One run, its progress forwarded while it lasts. The run is shielded from the
        request's cancellation so that the cancellation is seen here first: a client's is
        told to the run as the reason (its log ends "cancelled by the MCP client"), then it
        stops the run, its servers with it."""
        progress = Progress(ctx.session, len(workflow.steps))
        run = _ShieldedRun()
        asker = ClientAsker.of(ctx)
        if asker is None and self.settings.replay is None and (missing := unanswered(workflow)):
            raise ConfigurationError(
                f"step {missing[0].id!r} asks a question, and this MCP client cannot be asked "
                "(it declared no elicitation capability, or its connection carries no "
                "requests from the server)",
                hint="call it from a client that answers elicitation over the 2025-11-25 "
                "handshake (the Python SDK's Client(..., mode='legacy')), or give the step a "
                "`default:`",
            )
        options = self.settings.run_options(workflow.name, progress.sink, run.why, asker)
        async with anyio.create_task_group() as group:
            group.start_soon(progress.forward)
            group.start_soon(run.go, lambda: api.run_workflow(workflow, arguments, options))
            try:
                await run.finished.wait()
            except anyio.get_cancelled_exc_class():
                # The client's cancellation, or serve itself stopping (a signal, which the
                # runtime names itself).
                reason = None if signals.stopping() else CANCELLED_BY_CLIENT
                self.report(f"{workflow.name}: {reason or 'stopped'}")
                with anyio.CancelScope(shield=True):
                    await run.stop(reason)
                raise
            finally:
                progress.close()
        if run.error is not None:
            self.report(f"{workflow.name}: {run.error.message}")
            return serve_tools.error_result(run.error)
        assert run.result is not None
        self.report(f"{workflow.name}: {run.result.status} (run {run.result.run_id})")
        return serve_tools.run_result(run.result)


CANCELLED_BY_CLIENT = "cancelled by the MCP client"


class _ShieldedRun:
    """A run in a scope of its own: only `stop` cancels it, after saying why."""

    def __init__(self) -> None:
        self.finished = anyio.Event()
        self.result: api.WorkflowResult | None = None
        self.error: LmflowError | None = None
        self._scope = anyio.CancelScope(shield=True)
        self._reason: str | None = None

    def why(self) -> str | None:
        return self._reason

    async def go(self, run: Callable[[], Awaitable[api.WorkflowResult]]) -> None:
        try:
            with self._scope:
                self.result = await run()
        except LmflowError as error:  # an environment not ready: a tool error, not a crash
            self.error = error
        finally:
            self.finished.set()

    async def stop(self, reason: str | None) -> None:
        self._reason = reason
        self._scope.cancel()
        await self.finished.wait()


def _problems(workflow: str) -> list[Problem]:
    """The problems of a workflow given as a path to its file or as its YAML text."""
    candidate = Path(workflow.strip())
    if "\n" not in workflow.strip() and candidate.suffix in (".yaml", ".yml"):
        try:
            is_file = candidate.is_file()
        except OSError:  # a name too long for a path, say: then it is text
            is_file = False
        if is_file:
            return check_file(candidate)[1]
    return validate_document(parse_document(workflow, "<workflow>"))


# --- transports ------------------------------------------------------------------------------


async def serve_stdio(tools: LmflowTools) -> None:
    """Serve one client on stdin/stdout until it closes stdin."""
    from mcp.server.stdio import stdio_server

    server = tools.server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def serve_http(tools: LmflowTools, host: str, port: int, token: str | None) -> None:
    """Serve streamable HTTP at `/mcp`; with `token`, a request without it is answered 401."""
    import uvicorn

    app: Any = tools.server().streamable_http_app(host=host)
    if token is not None:
        app = RequireBearer(app, token)

    class WithoutSignals(uvicorn.Server):
        """The command's stop signals (runner/signals.py) cancel serving, so in-flight runs
        end their logs and stop their servers as any run does: uvicorn must not take them."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await WithoutSignals(config).serve()


class RequireBearer:
    """ASGI: every HTTP request must say `Authorization: Bearer <token>`, else 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b"a bearer token is required\n"})
                return
        await self.app(scope, receive, send)


def served(workflows: list[Workflow], report: Report) -> dict[str, Workflow]:
    """The workflows by tool name; a name taken by a built-in tool or an earlier workflow
    is reported and not served."""
    by_name: dict[str, Workflow] = {}
    for workflow in workflows:
        name = serve_tools.tool_name(workflow)
        if name in serve_tools.BUILT_IN or name in by_name:
            taken = (
                "a built-in tool"
                if name in serve_tools.BUILT_IN
                else f"taken by {by_name[name].path}"
            )
            report(f"not served: {workflow.path}: the tool name {name!r} is {taken}")
            continue
        by_name[name] = workflow
    return by_name
