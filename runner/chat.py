"""The neutral vocabulary between the agent engine and the outside world.

The engine talks to any `ChatModel` (LM Studio, a replayed cassette, a test fake) and any
`Toolbox` (MCP sessions, a cassette, a fake). Neither side imports the other; both import
this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, Any]
"""One OpenAI-format chat message (`role`, `content`, `tool_calls`, `tool_call_id`)."""


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for. `arguments` is the raw JSON text: it may be invalid."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True)
class ChatRequest:
    """One request to `/v1/chat/completions`, without transport details."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: Mapping[str, Any] | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON body of the request (no `stream` flag: the client decides that)."""
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in self.messages]}
        if self.tools:
            body["tools"] = [dict(t) for t in self.tools]
        optional = {
            "tool_choice": self.tool_choice,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": self.response_format,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body


@dataclass(frozen=True)
class ChatResponse:
    """The assistant's turn: text, tool calls, or both."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    reasoning: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    served: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """How the server served it: the model that answered, the structured-output form, time to
    first token, tokens per second, load time. Facts about this machine, not the exchange:
    kept out of snapshots and cassettes."""

    def assistant_message(self) -> dict[str, Any]:
        """The message to append to the conversation before the tool results."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or ""}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


class ChatModel(Protocol):
    """Anything that answers chat requests."""

    async def chat(self, request: ChatRequest) -> ChatResponse: ...


@dataclass(frozen=True)
class ToolSpec:
    """A tool as offered to the model: a function name the OpenAI rules accept."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave back. A failed tool is a result with `is_error`, not an exception."""

    text: str
    is_error: bool = False
    structured: Any = None
    full_text: str | None = None
    """The whole text when `text` was cut to what the model may read (runner/results.py)."""


class Toolbox(Protocol):
    """The tools one agent run may call.

    `call` returns errors of the tool itself (bad arguments, unknown tool, a timeout of one
    call) as a `ToolResult` with `is_error`; it raises `MCPServerError` only when the server
    behind the tool is gone, which fails the step.
    """

    def specs(self) -> Sequence[ToolSpec]: ...

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult: ...


@dataclass(frozen=True)
class EmbedRequest:
    """One request to `/v1/embeddings`: texts in, one vector per text out."""

    model: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class EmbedResponse:
    """The vectors of an `EmbedRequest`, in the order of its texts."""

    vectors: tuple[tuple[float, ...], ...]
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


@runtime_checkable
class EmbeddingModel(Protocol):
    """Anything that computes embeddings: the LM Studio client, a recorder, a cassette."""

    async def embed(self, request: EmbedRequest) -> EmbedResponse: ...
