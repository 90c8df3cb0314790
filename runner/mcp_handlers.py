"""What lmflow does when an MCP server speaks first, for one connection.

A server may send notifications (progress of a call, log messages, a changed tool list) and
requests (elicitation, the client's roots) at any time. `ServerHandlers` answers them for
one server of a run: notifications become run-log events (secrets masked by the run log) and
lines in the server's log file; requests get answers that never wait for a person, so a run
never blocks on a question.

It also says who lmflow is at initialize (`client_options`): its name and version, and, by
the callbacks it hands the SDK, the capabilities it declares (elicitation, roots, and
sampling to a server whose entry allows it: runner/mcp_sampling.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from mcp.client.context import ClientRequestContext
from mcp.client.session import IncomingMessage
from mcp.shared.dispatcher import ProgressFnT
from mcp.types import (
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitResult,
    Implementation,
    ListRootsResult,
    LoggingMessageNotificationParams,
    Root,
    ToolListChangedNotification,
)

from . import __version__
from .chat import ChatModel
from .mcp_sampling import ModelFor, Sampler
from .runlog import Scope, current_scope
from .spec.model import McpServer, thawed

CLIENT_INFO = Implementation(name="lmflow", version=__version__)
"""How lmflow introduces itself to every server."""


class EventSink(Protocol):
    """Where events go: `RunLog.emit`, which masks secrets and numbers each event."""

    def __call__(
        self, type: str, step: str | None = None, *, item: int | None = None, **data: Any
    ) -> Any: ...


def _no_events(type: str, step: str | None = None, *, item: int | None = None, **data: Any) -> None:
    return None


class ServerHandlers:
    """The answers and the event trail for one server's notifications and requests.

    `log_file` (the server's stderr log, when it has one) gets a line per log message the
    server sends, masked by `redact`. `tools_changed` is awaited when the server says its
    tool list changed.
    """

    def __init__(
        self,
        name: str,
        server: McpServer,
        *,
        emit: EventSink | None = None,
        redact: Callable[[str], str],
        log_file: Path | None = None,
        roots: Sequence[Path] = (),
        tools_changed: Callable[[], Awaitable[None]] | None = None,
        chat: ChatModel | None = None,
        model_for: ModelFor | None = None,
    ) -> None:
        self._name = name
        self._server = server
        self._emit = emit or _no_events
        self._redact = redact
        self._log_file = log_file
        self._roots = tuple(roots)
        self._tools_changed = tools_changed
        self._calls: list[Scope | None] = []
        self.sampler: Sampler | None = None
        if server.sampling is not None and chat is not None and model_for is not None:
            self.sampler = Sampler(
                name, server.sampling, chat, model_for, self._calling_scope, self._emit
            )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for `mcp.Client`: who lmflow is and what it answers."""
        sampling = {"sampling_callback": self.sampler} if self.sampler is not None else {}
        return {
            **sampling,
            "client_info": CLIENT_INFO,
            "elicitation_callback": self._elicit,
            "list_roots_callback": self._list_roots,
            "logging_callback": self._log,
            "message_handler": self._message,
        }

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Around one tool call: requests the server makes meanwhile belong to its step."""
        scope = current_scope.get()
        self._calls.append(scope)
        try:
            yield
        finally:
            self._calls.remove(scope)

    def _calling_scope(self) -> Scope | None:
        """The step of the newest call in progress (a request does not say which call)."""
        return self._calls[-1] if self._calls else None

    def progress(self, tool: str, timeout: anyio.CancelScope | None, seconds: float) -> ProgressFnT:
        """The progress callback of one call of `tool`: each notification becomes an
        `mcp_progress` event of the step that called, and moves the deadline of `timeout`
        (when given) to `seconds` from now."""
        scope = current_scope.get()
        step, item = (scope.step, scope.item) if scope is not None else (None, None)

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if timeout is not None:
                timeout.deadline = anyio.current_time() + seconds
            self._emit(
                "mcp_progress",
                step,
                item=item,
                server=self._name,
                tool=tool,
                progress=progress,
                total=total,
                message=message,
            )

        return on_progress

    async def _elicit(
        self, context: ClientRequestContext, params: ElicitRequestParams
    ) -> ElicitResult:
        """Answer by the server's `elicitation` policy: nobody is there to ask, and waiting
        would block the run."""
        content: dict[str, Any] | None = None
        reason: str | None = "the policy is decline"
        if not isinstance(params, ElicitRequestFormParams):
            reason = "lmflow opens no URLs"
        elif self._server.elicitation != "decline":
            content, reason = form_answer(params.requested_schema, self._server.elicitation_answers)
        action: Literal["accept", "decline"] = "accept" if content is not None else "decline"
        self._emit(
            "mcp_elicitation",
            server=self._name,
            message=params.message,
            action=action,
            content=content,
            reason=reason,
        )
        return ElicitResult(action=action, content=content)

    async def _list_roots(self, context: ClientRequestContext) -> ListRootsResult:
        return ListRootsResult(
            roots=[Root(uri=path.as_uri(), name=path.name or str(path)) for path in self._roots]  # type: ignore[arg-type]
        )

    async def _log(self, params: LoggingMessageNotificationParams) -> None:
        """A log message: an `mcp_log` event, and a line in the server's log file."""
        self._emit(
            "mcp_log", server=self._name, level=params.level, logger=params.logger, data=params.data
        )
        if self._log_file is not None:
            data = params.data if isinstance(params.data, str) else json.dumps(params.data)
            logger = f" {params.logger}" if params.logger else ""
            line = self._redact(f"[mcp {params.level}{logger}] {data}")
            with self._log_file.open("a", encoding="utf-8") as file:
                file.write(line + "\n")

    async def _message(self, message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification) and self._tools_changed is not None:
            await self._tools_changed()


def form_answer(
    schema: Mapping[str, Any], answers: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """The content that accepts a form: each field's answer, else its default. None and the
    reason when a required field has neither (the question is declined then)."""
    properties = schema.get("properties") or {}
    content: dict[str, Any] = {}
    for name, field in properties.items():
        if name in answers:
            content[name] = thawed(answers[name])
        elif isinstance(field, Mapping) and "default" in field:
            content[name] = field["default"]
    missing = [name for name in schema.get("required") or () if name not in content]
    if missing:
        return None, f"no answer and no default for {', '.join(missing)}"
    return content, None
