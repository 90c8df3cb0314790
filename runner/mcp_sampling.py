"""MCP sampling: a server asks lmflow's model for a completion in the middle of a tool call.

A server may sample only when its entry says `sampling:` (lmflow declares the capability to
that server alone). The model that answers is the one the entry names, else the model of
the step whose tool call asked, else `defaults.model`; the request goes through the run's
chat model, so a recorded run keeps it in the cassette like any model exchange. Each server
has a budget of requests and tokens for the whole run: past it, a request is refused with
an MCP error the server sees, never waited on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.client.context import ClientRequestContext
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    CreateMessageRequestParams,
    CreateMessageResult,
    ErrorData,
    SamplingMessage,
    TextContent,
)

from .chat import ChatModel, ChatRequest, Message
from .errors import LmflowError
from .runlog import Scope, current_scope
from .spec.model import Sampling

ModelFor = Callable[[str | None, str | None], str | None]
"""The model id that answers, from the model the server entry names (an alias or an id, or
None) and the id of the calling step (None: a request outside any step)."""


class Sampler:
    """Answers one server's `sampling/createMessage` requests within its `Sampling` limits.

    `scope` gives the step of the tool call in progress (the request names none).
    """

    def __init__(
        self,
        server: str,
        settings: Sampling,
        chat: ChatModel,
        model_for: ModelFor,
        scope: Callable[[], Scope | None],
        emit: Callable[..., Any],
    ) -> None:
        self._server = server
        self._settings = settings
        self._chat = chat
        self._model_for = model_for
        self._scope = scope
        self._emit = emit
        self.requests = 0
        self.tokens = 0

    async def __call__(
        self, context: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult | ErrorData:
        scope = self._scope()
        step, item = (scope.step, scope.item) if scope is not None else (None, None)
        model = self._model_for(self._settings.model, step)
        refused = self._refusal(model)
        if refused is not None:
            self._emit("mcp_sampling", step, item=item, server=self._server, refused=refused)
            return ErrorData(code=INVALID_REQUEST, message=refused)
        assert model is not None
        self.requests += 1
        budget = self._settings.max_tokens - self.tokens
        request = ChatRequest(
            model=model,
            messages=tuple(_messages(params)),
            temperature=params.temperature,
            max_tokens=min(params.max_tokens, budget),
        )
        token = current_scope.set(scope)  # a recorder files the exchange under the step
        try:
            response = await self._chat.chat(request)
        except LmflowError as error:
            self._emit("mcp_sampling", step, item=item, server=self._server, refused=error.message)
            return ErrorData(code=INTERNAL_ERROR, message=f"lmflow's model failed: {error.message}")
        finally:
            current_scope.reset(token)
        self.tokens += response.usage.prompt_tokens + response.usage.completion_tokens
        self._emit(
            "mcp_sampling",
            step,
            item=item,
            server=self._server,
            model=model,
            messages=list(request.messages),
            content=response.content or "",
            usage=response.usage.as_dict(),
        )
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text=response.content or ""),
            model=model,
            stop_reason="maxTokens" if response.finish_reason == "length" else "endTurn",
        )

    def _refusal(self, model: str | None) -> str | None:
        limits = self._settings
        if model is None:
            return "no model to answer: set sampling.model on the server or defaults.model"
        if self.requests >= limits.max_requests:
            return f"sampling limit reached: {limits.max_requests} requests (sampling.max_requests)"
        if self.tokens >= limits.max_tokens:
            return f"sampling limit reached: {limits.max_tokens} tokens (sampling.max_tokens)"
        return None


def _messages(params: CreateMessageRequestParams) -> list[Message]:
    """The server's messages as chat messages: text as text, other content named."""
    messages: list[Message] = []
    if params.system_prompt:
        messages.append({"role": "system", "content": params.system_prompt})
    messages.extend({"role": m.role, "content": _text(m)} for m in params.messages)
    return messages


def _text(message: SamplingMessage) -> str:
    blocks = message.content if isinstance(message.content, list) else [message.content]
    return "\n".join(
        block.text if isinstance(block, TextContent) else f"[{block.type} content]"
        for block in blocks
    )
