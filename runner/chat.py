"""The neutral vocabulary between the agent engine and the outside world.

The engine talks to any `ChatModel` (LM Studio, a replayed cassette, a test fake) and any
`Toolbox` (MCP sessions, a cassette, a fake). Neither side imports the other; both import
this module.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, Any]
"""One OpenAI-format chat message (`role`, `content`, `tool_calls`, `tool_call_id`). A
`content` may be a list of parts: `{"type": "text", ...}`, `{"type": "image_url", ...}` (a
URL passed on as it is) or an `Image`, which only the wire form spells out in base64."""


@dataclass(frozen=True)
class Image:
    """An image sent to a vision model, known by its bytes. Logs, snapshots and cassettes
    show its `reference` (hash, type, size); only the request to the server carries the
    data itself (`wire_messages`)."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        """The short content hash that names it everywhere (16 hex digits of its SHA-256)."""
        return hashlib.sha256(self.data).hexdigest()[:16]

    def reference(self) -> dict[str, Any]:
        return {
            "type": "image",
            "sha256": self.digest,
            "media_type": self.media_type,
            "bytes": len(self.data),
        }

    def data_uri(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def user_message(text: str, images: Sequence[Image | str] = ()) -> dict[str, Any]:
    """A user turn: plain text, or text and images (an `Image`, or a URL passed on as is)."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[Any] = [{"type": "text", "text": text}]
    parts.extend(
        image if isinstance(image, Image) else {"type": "image_url", "image_url": {"url": image}}
        for image in images
    )
    return {"role": "user", "content": parts}


def _content_parts(messages: Sequence[Message], part: Callable[[Image], Any]) -> list[Any]:
    """The messages with each `Image` part replaced by `part(image)`; others as they are."""
    out: list[Any] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, tuple)) and any(isinstance(p, Image) for p in content):
            message = {
                **message,
                "content": [part(p) if isinstance(p, Image) else p for p in content],
            }
        out.append(dict(message))
    return out


def wire_messages(messages: Sequence[Message]) -> list[Any]:
    """The messages as the server takes them: each image a base64 `data:` URI."""
    return _content_parts(
        messages, lambda image: {"type": "image_url", "image_url": {"url": image.data_uri()}}
    )


def described_messages(messages: Sequence[Message]) -> list[Any]:
    """The messages as logs and cassettes keep them: each image by its `reference`."""
    return _content_parts(messages, Image.reference)


def images_in(messages: Sequence[Message]) -> list[Image]:
    """Every `Image` part of the messages, in order."""
    return [
        part
        for message in messages
        if isinstance(message.get("content"), (list, tuple))
        for part in message["content"]
        if isinstance(part, Image)
    ]


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
        body: dict[str, Any] = {"model": self.model, "messages": wire_messages(self.messages)}
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


def sees_images(model: ChatModel, name: str) -> bool:
    """Whether the chat model knows that model `name` sees images: its `vision_models`
    (the LM Studio client's, from the model check; a cassette's, as recorded). A chat model
    that cannot tell says no, and images stay files named in the text."""
    return name in getattr(model, "vision_models", ())


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
    images: tuple[Image, ...] = ()
    """The images the tool returned (also named in `text`): a vision model is shown them."""


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
