"""A fake LM Studio: a real HTTP server on 127.0.0.1 (random port) speaking its protocol.

The client is tested over real sockets against this, never by patching httpx.

    with FakeLMStudio() as lm:                      # LM Studio 0.4 with DEFAULT_MODELS
        LMStudioClient(lm.url)

Behaviours (keyword arguments, combinable; all are also plain attributes you may change):

    api="v1" | "v0" | "openai"   LM Studio 0.4 (native /api/v1), 0.3 (/api/v0, /api/v1 is
                                 404), or a bare OpenAI-compatible server (/api/* is 404)
    models=[FakeModel(...)]      what the server has (default DEFAULT_MODELS)
    token="secret"               every request needs `Authorization: Bearer secret`
    fail_times=2                 the first N requests answer 503
    delay=1.0                    every answer waits this many seconds
    cut_body=100                 chat answers (plain or streamed) stop after this many bytes
                                 of body and the connection closes: a reply cut mid-way
    cut_times=1                  with cut_body: only the first N chat answers are cut
    end_stream_early=True        streamed answers end cleanly after their content, with no
                                 finish reason and no [DONE]
    chat_delay=0.5               chat completions (only) wait this many seconds, the way a
                                 model takes time to answer; concurrent requests overlap
    chat_error=(400, {...})      chat completions answer this status and JSON body, e.g.
                                 the string-shaped `{"error": "No models loaded..."}`
    calls_as_text="hermes"       a server that does not parse the model's tool calls: each
                                 scripted tool-call turn goes out as text in that format,
                                 "hermes" (<tool_call>{...}</tool_call>), "lmstudio"
                                 ([TOOL_REQUEST]{...}[END_TOOL_REQUEST]) or "json" (a bare
                                 JSON object, a list of them for several calls)
    response_formats=("text", "json_object")
                                 the `response_format` types chat accepts (None: all). With
                                 json_object but not json_schema it refuses like llama-cpp-
                                 python's server (500 "Input should be 'text' or
                                 'json_object'"); without json_object like a server that
                                 knows no response_format (400)
    broken_models={"id": 503}    chat requests for these models answer this status (a model
                                 that crashed or cannot load), every time
    unstreamable_tools=True      a streamed request with tools gets the SSE headers and an
                                 empty body, as llama-cpp-python's chatml-function-calling
                                 does ("Automatic streaming tool choice is not supported")
    stream_usage=False           streamed answers carry no `usage` chunk (llama-cpp-python)
    stats=True                   answers carry LM Studio's `stats` (tokens_per_second,
                                 time_to_first_token, model_load_time_seconds)
    embed_delay=0.5              embedding requests (only) wait this many seconds
    script=[...]                 one item per chat request, in order:
                                   "text"                          an answer
                                   [("name", {"a": 1}), ...]       tool calls; arguments as a
                                                                   dict (sent as JSON) or a
                                                                   raw string (sent as is,
                                                                   may be invalid JSON)
                                   {"content": ..., ...}           the assistant message itself
                                   callable(request_json)          returns any of the above
                                   Refusal(400, "message")         an HTTP error answer
                                   stuck_on("name", {...}, "text") a small model caught in a
                                                                   loop: that same call while
                                                                   tools are offered, "text"
                                                                   when none are
                                 A request past the end of the script gets HTTP 400 (code
                                 `script_exhausted`). Without a script, answers echo the last
                                 user message.

Embeddings (`/v1/embeddings`, for a model of type `embedding` only) are deterministic: each
word of a text counts in one of `EMBED_DIMENSIONS` buckets chosen by a hash of the word, and
the counts are scaled to length 1. Texts that share words are similar, so which documents are
nearest to a question is stable and makes sense; usage counts one prompt token per word.

Images: a user message may carry OpenAI `image_url` parts. A request with images for a
model that is not a vision model (`type="vlm"`) is refused as LM Studio does (400 "Model does
not support images"); the echo names each image it got by what it read from it:
`[image image/png 2x2 sha256:<16 hex> 70 bytes]`, or `[image url https://...]`, so a test can
assert which image arrived. `image_summary(part)` gives that text for a part.

Chat answers are plain JSON or, when the request says `"stream": true`, SSE with content and
tool-call arguments in small pieces (pieces of different calls interleaved, joined by
`index`). Reasoning is passed through under the key the message uses (`reasoning` or
`reasoning_content`).

What it received: `requests` (every `Received`), `chat_requests` (the JSON bodies sent to
/v1/chat/completions), `embed_requests` (those sent to /v1/embeddings), `count(path)`,
`peak_in_flight` (the most chat requests it was answering at once: how a test proves that
steps overlap). `down_url()` gives a URL where nothing listens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

Api = Literal["v1", "v0", "openai"]
ScriptItem = Any  # str | list of (name, arguments) | dict | Refusal | Callable[..., ScriptItem]


@dataclass(frozen=True)
class Refusal:
    """A script item answered with an HTTP error instead of a message."""

    status: int
    message: str


@dataclass
class FakeModel:
    """A model as the fake lists it; rendered in the shape of whichever API is asked."""

    key: str
    type: Literal["llm", "vlm", "embedding"] = "llm"
    loaded: bool = False
    tool_use: bool | None = True
    max_context_length: int = 32768
    context_length: int = 4096
    quantization: str = "Q4_K_M"
    variants: tuple[str, ...] = ()
    parallel: int | None = None
    """Slots of its loaded instance, as LM Studio 0.4 reports them (`config.parallel`)."""

    @property
    def publisher(self) -> str:
        return self.key.split("/")[0] if "/" in self.key else "lmstudio-community"

    def native_v1(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "embedding" if self.type == "embedding" else "llm",
            "publisher": self.publisher,
            "key": self.key,
            "display_name": self.key.rsplit("/", 1)[-1],
            "quantization": {"name": self.quantization, "bits_per_weight": 4},
            "size_bytes": 1_000_000,
            "params_string": "7B",
            "loaded_instances": [self._instance()] if self.loaded else [],
            "max_context_length": self.max_context_length,
            "format": "gguf",
        }
        if self.type != "embedding":
            entry["capabilities"] = {"vision": self.type == "vlm"}
            if self.tool_use is not None:
                entry["capabilities"]["trained_for_tool_use"] = self.tool_use
        if self.variants:
            entry["variants"] = list(self.variants)
        return entry

    def _instance(self) -> dict[str, Any]:
        config: dict[str, Any] = {"context_length": self.context_length}
        if self.parallel is not None:
            config["parallel"] = self.parallel
        return {"id": self.key, "config": config}

    def native_v0(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.key,
            "object": "model",
            "type": "embeddings" if self.type == "embedding" else self.type,
            "publisher": self.publisher,
            "arch": "llama",
            "compatibility_type": "gguf",
            "quantization": self.quantization,
            "state": "loaded" if self.loaded else "not-loaded",
            "max_context_length": self.max_context_length,
        }
        if self.loaded:
            entry["loaded_context_length"] = self.context_length
        if self.tool_use is not None:
            entry["capabilities"] = ["tool_use"] if self.tool_use else []
        return entry

    def openai(self) -> dict[str, Any]:
        return {"id": self.key, "object": "model", "owned_by": self.publisher}

    def answers_to(self, name: str) -> bool:
        """Whether LM Studio would serve a request for `name` with this model."""
        base = name.split(":")[0].split("@")[0]
        return base in (self.key, self.key.rsplit("/", 1)[-1])


DEFAULT_MODELS: tuple[FakeModel, ...] = (
    FakeModel("qwen/qwen3-coder-30b", loaded=True, max_context_length=262144, context_length=8192),
    FakeModel("mistralai/magistral-small-2509"),
    FakeModel("google/gemma-3-270m", tool_use=False),
    FakeModel("qwen/qwen2.5-vl-7b", type="vlm"),
    FakeModel("text-embedding-nomic-embed-text-v1.5", type="embedding", tool_use=None),
)


EMBED_DIMENSIONS = 128
"""The length of the fake's embedding vectors."""


def fake_embedding(text: str) -> list[float]:
    """The fake's vector of `text`: its words counted in hashed buckets, scaled to length 1
    (all zeros but the first for a text without words)."""
    counts = [0.0] * EMBED_DIMENSIONS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        bucket = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big")
        counts[bucket % EMBED_DIMENSIONS] += 1.0
    norm = math.sqrt(sum(c * c for c in counts))
    if not norm:
        return [1.0] + [0.0] * (EMBED_DIMENSIONS - 1)
    return [round(c / norm, 6) for c in counts]


FAKE_STATS = {
    "tokens_per_second": 42.5,
    "time_to_first_token": 0.25,
    "generation_time": 0.5,
    "stop_reason": "eosFound",
    "model_load_time_seconds": 1.5,
}
"""What the fake reports as LM Studio's `stats` when `stats=True`."""


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    client_port: int


@dataclass
class FakeLMStudio:
    """See the module docstring. Start with `with FakeLMStudio(...) as lm:` or `.start()`."""

    api: Api = "v1"
    models: list[FakeModel] = field(default_factory=lambda: [*map(_copy, DEFAULT_MODELS)])
    token: str | None = None
    fail_times: int = 0
    delay: float = 0.0
    chat_delay: float = 0.0
    chat_error: tuple[int, Any] | None = None
    cut_body: int | None = None
    cut_times: int | None = None
    end_stream_early: bool = False
    response_formats: tuple[str, ...] | None = None
    broken_models: dict[str, int] = field(default_factory=dict)
    stats: bool = False
    stream_usage: bool = True
    unstreamable_tools: bool = False
    embed_delay: float = 0.0
    script: Sequence[ScriptItem] | None = None
    calls_as_text: Literal["hermes", "lmstudio", "json"] | None = None
    requests: list[Received] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._turn = 0
        self._in_flight = 0
        self.peak_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeLMStudio:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.fake = self  # type: ignore[attr-defined]
        self._httpd = httpd
        # A short poll interval: `stop()` waits for it.
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.02,), name="fake-lmstudio"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> FakeLMStudio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the fake first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # --- what it received --------------------------------------------------------------------

    @property
    def chat_requests(self) -> list[Any]:
        return [r.body for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def embed_requests(self) -> list[Any]:
        return [r.body for r in self.requests if r.path == "/v1/embeddings"]

    def count(self, path: str) -> int:
        return sum(r.path == path for r in self.requests)

    # --- answering ---------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append(
                Received(
                    handler.command, path, dict(handler.headers), body, handler.client_address[1]
                )
            )
            failing = self.fail_times > 0
            if failing:
                self.fail_times -= 1
        if self.delay:
            self._stopping.wait(self.delay)
        if failing:
            return _send(
                handler, 503, {"error": {"message": "Service Unavailable", "type": "server_error"}}
            )
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return _send(
                handler,
                401,
                {
                    "error": {
                        "message": "Invalid or missing API token",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
        route = self._routes().get((handler.command, path))
        if route is None:
            if self.api == "openai":
                return _send(handler, 404, {"detail": "Not Found"})
            return _send(
                handler,
                404,
                {"error": f"Unexpected endpoint or method. ({handler.command} {path})"},
            )
        route(handler, body)

    def _routes(self) -> dict[tuple[str, str], Callable[[_Handler, Any], None]]:
        routes: dict[tuple[str, str], Callable[[_Handler, Any], None]] = {
            ("GET", "/v1/models"): lambda h, _: self._list(h, "data", FakeModel.openai),
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
        }
        if self.api in ("v1", "v0"):
            routes[("GET", "/api/v0/models")] = lambda h, _: self._list(
                h, "data", FakeModel.native_v0
            )
        if self.api == "v1":
            routes[("GET", "/api/v1/models")] = lambda h, _: self._list(
                h, "models", FakeModel.native_v1
            )
            routes[("POST", "/api/v1/models/load")] = self._load
        return routes

    def _list(
        self, handler: _Handler, key: str, render: Callable[[FakeModel], dict[str, Any]]
    ) -> None:
        body: dict[str, Any] = {key: [render(m) for m in self.models]}
        if key == "data":
            body["object"] = "list"
        _send(handler, 200, body)

    def _find(self, name: Any) -> FakeModel | None:
        return next((m for m in self.models if isinstance(name, str) and m.answers_to(name)), None)

    def _load(self, handler: _Handler, body: Any) -> None:
        model = self._find((body or {}).get("model"))
        if model is None:
            return _send(
                handler,
                404,
                {"error": {"message": f"Model not found: {body!r}", "code": "model_not_found"}},
            )
        model.loaded = True
        _send(
            handler,
            200,
            {
                "type": "llm",
                "instance_id": model.key,
                "model_instance_id": model.key,
                "load_time_seconds": 0.01,
                "status": "loaded",
                "config": {"context_length": model.context_length},
            },
        )

    def _chat(self, handler: _Handler, body: Any) -> None:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            if self.chat_delay:
                self._stopping.wait(self.chat_delay)
            self._answer_chat(handler, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer_chat(self, handler: _Handler, body: Any) -> None:
        if self.chat_error is not None:
            return _send(handler, *self.chat_error)
        name = (body or {}).get("model")
        if self._find(name) is None:
            return _send(
                handler,
                400,
                {
                    "error": {
                        "message": f'Invalid model identifier "{name}".',
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
            )
        if name in self.broken_models:
            status = self.broken_models[name]
            return _send(handler, status, {"error": {"message": f"model {name} crashed"}})
        model = self._find(name)
        if model is not None and model.type != "vlm" and _has_images(body):
            return _send(
                handler,
                400,
                {"error": "Model does not support images. Please use a model that does."},
            )
        refusal = self._format_refusal(body.get("response_format"))
        if refusal is not None:
            return _send(handler, *refusal)
        with self._lock:
            turn = self._turn
            self._turn += 1
        if self.script is None:
            item: ScriptItem = f"echo: {_last_user_text(body)}"
        elif turn >= len(self.script):
            return _send(
                handler,
                400,
                {
                    "error": {
                        "message": f"fake LM Studio: the script has only {len(self.script)} turns",
                        "code": "script_exhausted",
                    }
                },
            )
        else:
            item = self.script[turn]
        if callable(item):
            item = item(body)
        if isinstance(item, Refusal):
            return _send(handler, item.status, {"error": {"message": item.message}})
        message = _assistant_message(item, turn)
        if self.calls_as_text and message.get("tool_calls"):
            message = {"role": "assistant", "content": _written(message, self.calls_as_text)}
        usage = _usage(body, message)
        if self._cutting():
            handler.wfile = _CutWriter(handler, self.cut_body or 0)  # type: ignore[assignment]
        extra = {"stats": dict(FAKE_STATS)} if self.stats else {}
        if body.get("stream") and self.unstreamable_tools and body.get("tools"):
            return _stream(handler, name, message, None, early=True, chunks=False)
        if body.get("stream"):
            counts = usage if self.stream_usage else None
            return _stream(handler, name, message, counts, early=self.end_stream_early, extra=extra)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        _send(
            handler,
            200,
            {
                **extra,
                "id": f"chatcmpl-{turn}",
                "object": "chat.completion",
                "created": 0,
                "model": name,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
                "system_fingerprint": name,
            },
        )

    def _embeddings(self, handler: _Handler, body: Any) -> None:
        """LM Studio's /v1/embeddings: one text or a list of them, for an embedding model."""
        if self.embed_delay:
            self._stopping.wait(self.embed_delay)
        name = (body or {}).get("model")
        model = self._find(name)
        if model is None or model.type != "embedding":
            detail = "is not an embedding model" if model else "is not a valid model"
            return _send(
                handler,
                400,
                {"error": {"message": f'Model "{name}" {detail}.', "code": "model_not_found"}},
            )
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _send(handler, 400, {"error": {"message": "'input' must be text or texts"}})
        words = sum(len(t.split()) for t in texts)
        _send(
            handler,
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": fake_embedding(t), "index": i}
                    for i, t in enumerate(texts)
                ],
                "model": model.key,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            },
        )

    def _format_refusal(self, wanted: Any) -> tuple[int, Any] | None:
        """The error for a `response_format` this server does not take, or None."""
        kind = wanted.get("type") if isinstance(wanted, Mapping) else None
        if kind is None or self.response_formats is None or kind in self.response_formats:
            return None
        if "json_object" in self.response_formats:  # llama-cpp-python 0.3's server, verbatim
            detail = (
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
                "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
                f"'input': '{kind}', 'ctx': {{'expected': \"'text' or 'json_object'\"}}}}\n"
            )
            error = {
                "message": detail,
                "type": "internal_server_error",
                "param": None,
                "code": None,
            }
            return 500, {"error": error}
        return 400, {"error": {"message": "response_format is not supported", "code": None}}

    def _cutting(self) -> bool:
        """Whether this chat answer is cut (counts down `cut_times`)."""
        if self.cut_body is None:
            return False
        with self._lock:
            if self.cut_times is None:
                return True
            if self.cut_times <= 0:
                return False
            self.cut_times -= 1
            return True


class _Server(ThreadingHTTPServer):
    """The fake's HTTP server. A client that hangs up mid-answer (a run stopped by Ctrl-C, a
    timeout) is normal for LM Studio; the standard server would print a traceback for it."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _CutWriter:
    """Passes the status line and headers, then `limit` bytes of body, then closes the
    connection: what a server that crashed mid-reply looks like to the client."""

    def __init__(self, handler: _Handler, limit: int) -> None:
        self._handler = handler
        self._raw = handler.wfile
        self._body_left = limit
        self._in_body = False

    def write(self, data: bytes) -> int:
        if not self._in_body:
            self._raw.write(data)
            self._in_body = data.endswith(b"\r\n\r\n")
            return len(data)
        if self._body_left <= 0:
            return len(data)
        self._raw.write(data[: self._body_left])
        self._body_left -= len(data)
        if self._body_left <= 0:
            self._raw.flush()
            self._handler.close_connection = True
            self._handler.connection.shutdown(socket.SHUT_RDWR)
        return len(data)

    def flush(self) -> None:
        if self._body_left > 0:
            self._raw.flush()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def close(self) -> None:
        self._raw.close()


def _copy(model: FakeModel) -> FakeModel:
    return FakeModel(**vars(model))


def _last_user_text(body: Any) -> str:
    users = [m for m in body.get("messages", ()) if m.get("role") == "user"]
    if not users:
        return ""
    content = users[-1].get("content", "")
    if not isinstance(content, list):
        return str(content)
    return " ".join(
        part.get("text", "") if part.get("type") == "text" else image_summary(part)
        for part in content
    )


def _has_images(body: Any) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(part.get("type") == "image_url" for part in m["content"])
        for m in body.get("messages", ())
    )


def image_summary(part: Mapping[str, Any]) -> str:
    """What the fake read from an `image_url` part: the type, size and hash of a data URI's
    image (width x height for a PNG), or the URL."""
    url = str((part.get("image_url") or {}).get("url", ""))
    if not url.startswith("data:"):
        return f"[image url {url}]"
    head, _, payload = url.partition(",")
    data = base64.b64decode(payload)
    size = ""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = struct.unpack(">II", data[16:24])
        size = f" {width}x{height}"
    media_type = head.removeprefix("data:").split(";")[0]
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"[image {media_type}{size} sha256:{digest} {len(data)} bytes]"


def _assistant_message(item: ScriptItem, turn: int) -> dict[str, Any]:
    if isinstance(item, str):
        return {"role": "assistant", "content": item}
    if isinstance(item, Mapping):
        return {"role": "assistant", **item}
    calls = []
    for index, call in enumerate(item):
        name, arguments = (call["name"], call["arguments"]) if isinstance(call, Mapping) else call
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append(
            {
                "id": f"call_{turn}_{index}",
                "type": "function",
                "function": {"name": name, "arguments": text},
            }
        )
    return {"role": "assistant", "content": "", "tool_calls": calls}


def stuck_on(name: str, arguments: Any, answer: str) -> Callable[[Any], ScriptItem]:
    """A script item for a model caught in a loop (as Gemma 3 270M is): it calls `name` with
    `arguments` whenever the request offers tools, and answers `answer` only when it does not."""

    def turn(body: Any) -> ScriptItem:
        return [(name, arguments)] if body.get("tools") else answer

    return turn


def _written(message: Mapping[str, Any], form: str) -> str:
    """The message's tool calls as a model writes them in text when the server does not
    parse them; arguments given as a raw string go in as they are (broken JSON stays broken)."""
    calls = [
        f'{{"name": {json.dumps(c["function"]["name"])}, '
        f'"arguments": {c["function"]["arguments"] or "{}"}}}'
        for c in message["tool_calls"]
    ]
    if form == "json":
        return calls[0] if len(calls) == 1 else f"[{', '.join(calls)}]"
    opening, closing = {
        "hermes": ("<tool_call>", "</tool_call>"),
        "lmstudio": ("[TOOL_REQUEST]", "[END_TOOL_REQUEST]"),
    }[form]
    return "\n".join(f"{opening}\n{call}\n{closing}" for call in calls)


def _usage(body: Any, message: Mapping[str, Any]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", ()))
    completion = len(str(message.get("content") or "").split()) + len(
        message.get("tool_calls") or ()
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _pieces(text: str, size: int = 5) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _stream_deltas(message: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield {"role": "assistant"}
    for key in ("reasoning", "reasoning_content"):
        for piece in _pieces(str(message.get(key) or "")):
            yield {key: piece}
    for piece in _pieces(str(message.get("content") or "")):
        yield {"content": piece}
    calls = message.get("tool_calls") or []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call["id"], "type": "function"}
        yield {
            "tool_calls": [
                {**head, "function": {"name": call["function"]["name"], "arguments": ""}}
            ]
        }
    # Argument pieces of different calls interleaved: only `index` tells them apart.
    pieces = [_pieces(call["function"]["arguments"]) for call in calls]
    for position in range(max(map(len, pieces), default=0)):
        for index, parts in enumerate(pieces):
            if position < len(parts):
                yield {"tool_calls": [{"index": index, "function": {"arguments": parts[position]}}]}


def _stream(
    handler: _Handler,
    model: str,
    message: Mapping[str, Any],
    usage: dict[str, int] | None,
    *,
    early: bool = False,
    extra: Mapping[str, Any] | None = None,
    chunks: bool = True,
) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    base = {
        "id": "chatcmpl-stream",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
    }
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    pieces = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
        for d in (_stream_deltas(message) if chunks else ())
    ]
    if not early:
        pieces.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if usage is not None or extra:
            pieces.append({**base, "choices": [], "usage": usage, **(extra or {})})
    for chunk in pieces:
        _write_chunk(handler, f"data: {json.dumps(chunk)}\n\n".encode())
    if not early:
        _write_chunk(handler, b"data: [DONE]\n\n")
    handler.wfile.write(b"0\r\n\r\n")


def _write_chunk(handler: _Handler, data: bytes) -> None:
    handler.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def _send(handler: _Handler, status: int, body: Any) -> None:
    if isinstance(body, str):
        data, kind = body.encode(), "text/plain; charset=utf-8"
    else:
        data, kind = json.dumps(body).encode(), "application/json"
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be observed
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = 30  # an idle keep-alive connection is dropped after this

    def do_GET(self) -> None:
        self.server.fake._handle(self)  # type: ignore[attr-defined]

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on `requests`, not on a log."""


def down_url() -> str:
    """A loopback URL where nothing listens (a port that was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def install_fake_lms(directory: Path, processes: Sequence[Mapping[str, Any]]) -> Path:
    """Write an executable `lms` into `directory` whose `lms ps --json` prints `processes`;
    put `directory` first on PATH to use it. Any other command exits 1."""
    script = directory / "lms"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"if sys.argv[1:] == ['ps', '--json']:\n"
        f"    print({json.dumps(json.dumps(list(processes)))})\n"
        "else:\n"
        "    sys.exit(1)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


__all__ = [
    "DEFAULT_MODELS",
    "EMBED_DIMENSIONS",
    "FakeLMStudio",
    "FakeModel",
    "Received",
    "down_url",
    "fake_embedding",
    "image_summary",
    "install_fake_lms",
    "stuck_on",
]
