"""What LM Studio and other OpenAI-compatible servers answer, read into lmflow's types: error
bodies, model lists (LM Studio's native `/api/v1` and `/api/v0`, plain `/v1/models`),
completions, and streamed chunks joined into one answer with its timing. Pure reading: the
requests themselves are lmstudio.py's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .catalog import ApiFlavour, ModelInfo, ModelState, ModelType
from .chat import ChatResponse, EmbedResponse, ToolCall, Usage
from .errors import LLMResponseError

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
ModelParser = Callable[[Any], "tuple[ModelInfo, ...] | None"]


_TOKEN_KEYS = ("content", "reasoning", "reasoning_content", "tool_calls")
_STATS_KEYS = {
    "time_to_first_token": "ttft_s",
    "time_to_first_token_seconds": "ttft_s",
    "tokens_per_second": "tokens_per_s",
    "model_load_time_seconds": "load_s",
}


def server_stats(stats: Any) -> dict[str, float]:
    """LM Studio's own figures (`stats` of a chat answer) under lmflow's names."""
    if not isinstance(stats, Mapping):
        return {}
    found = {}
    for key, name in _STATS_KEYS.items():
        value = stats.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = rounded(float(value))
    return found


def rounded(seconds: float) -> float:
    return round(seconds, 3)


def error_detail(response: httpx.Response) -> tuple[str, str | None]:
    """Message and code from either LM Studio error shape: `{"error": {"message", "code"}}` or
    `{"error": "text"}`; plain text bodies are kept as they are."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:500] or response.reason_phrase), None
    return _error_fields(body) or (json.dumps(body)[:500], None)


def _error_fields(body: Any) -> tuple[str, str | None] | None:
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        return str(error.get("message") or json.dumps(dict(error))), (str(code) if code else None)
    if isinstance(error, str):
        return error, None
    if isinstance(body.get("message"), str):
        return body["message"], None
    return None


def loads_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise LLMResponseError(f"{path} sent something that is not JSON: {text[:200]!r}") from error


def json_object(response: httpx.Response, path: str) -> Mapping[str, Any]:
    body = loads_json(response.text, path)
    if not isinstance(body, Mapping):
        raise LLMResponseError(f"{path} answered with JSON that is not an object")
    fields = _error_fields(body) if "error" in body else None
    if fields:  # some servers answer errors with status 200
        raise LLMResponseError(f"{path} answered with an error: {fields[0]}", code=fields[1])
    return body


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _entries(body: Any, key: str) -> list[Mapping[str, Any]] | None:
    items = body.get(key) if isinstance(body, Mapping) else None
    if not isinstance(items, list):
        return None
    return [item for item in items if isinstance(item, Mapping)]


def _variant_names(raw: Any) -> tuple[str, ...]:
    names = []
    for item in raw if isinstance(raw, list) else ():
        name = item.get("key") or item.get("name") if isinstance(item, Mapping) else item
        if isinstance(name, str):
            names.append(name)
    return tuple(names)


def models_native_v1(body: Any) -> tuple[ModelInfo, ...] | None:
    """`GET /api/v1/models` (LM Studio 0.4+): loaded means `loaded_instances` is not empty."""
    entries = _entries(body, "models")
    if entries is None:
        return None
    models = []
    for entry in entries:
        if not isinstance(entry.get("key"), str):
            continue
        instances = [i for i in entry.get("loaded_instances") or () if isinstance(i, Mapping)]
        capabilities = entry.get("capabilities")
        capabilities = capabilities if isinstance(capabilities, Mapping) else {}
        kind: ModelType = "llm"
        if entry.get("type") in ("embedding", "embeddings"):
            kind = "embedding"
        elif capabilities.get("vision") is True:
            kind = "vlm"
        quantization = entry.get("quantization")
        if isinstance(quantization, Mapping):
            quantization = quantization.get("name")
        configs: list[Mapping[str, Any]] = [
            config for i in instances if isinstance(config := i.get("config"), Mapping)
        ]
        contexts = [int_or_none(config.get("context_length")) for config in configs]
        slots = [int_or_none(config.get("parallel")) for config in configs]
        tool_use = capabilities.get("trained_for_tool_use")
        models.append(
            ModelInfo(
                id=entry["key"],
                type=kind,
                state="loaded" if instances else "not-loaded",
                max_context_length=int_or_none(entry.get("max_context_length")),
                loaded_context_length=next((c for c in contexts if c), None),
                tool_use=tool_use if isinstance(tool_use, bool) else None,
                variants=_variant_names(entry.get("variants")),
                quantization=quantization if isinstance(quantization, str) else None,
                instances=tuple(str(i["id"]) for i in instances if "id" in i),
                parallel=sum(n for n in slots if n and n > 0) or None,
            )
        )
    return tuple(models)


def models_native_v0(body: Any) -> tuple[ModelInfo, ...] | None:
    """`GET /api/v0/models` (LM Studio 0.3): `type` and `state` per model."""
    entries = _entries(body, "data")
    if entries is None or any("type" not in e and "state" not in e for e in entries):
        return None
    states: dict[Any, ModelState] = {"loaded": "loaded", "not-loaded": "not-loaded"}
    types: dict[Any, ModelType] = {
        "embeddings": "embedding",
        "embedding": "embedding",
        "vlm": "vlm",
    }
    models = []
    for entry in entries:
        if not isinstance(entry.get("id"), str):
            continue
        capabilities = entry.get("capabilities")
        models.append(
            ModelInfo(
                id=entry["id"],
                type=types.get(entry.get("type"), "llm"),
                state=states.get(entry.get("state"), "unknown"),
                max_context_length=int_or_none(entry.get("max_context_length")),
                loaded_context_length=int_or_none(entry.get("loaded_context_length")),
                tool_use="tool_use" in capabilities if isinstance(capabilities, list) else None,
                quantization=entry.get("quantization")
                if isinstance(entry.get("quantization"), str)
                else None,
            )
        )
    return tuple(models)


def models_openai(body: Any) -> tuple[ModelInfo, ...] | None:
    """`GET /v1/models`: ids only. Embedding models are recognized by name, as the API is mute."""
    entries = _entries(body, "data")
    if entries is None:
        return None
    return tuple(
        ModelInfo(id=e["id"], type="embedding" if "embed" in e["id"].lower() else "llm")
        for e in entries
        if isinstance(e.get("id"), str)
    )


MODEL_ENDPOINTS: tuple[tuple[ApiFlavour, str, ModelParser], ...] = (
    ("native-v1", "/api/v1/models", models_native_v1),
    ("native-v0", "/api/v0/models", models_native_v0),
    ("openai", "/v1/models", models_openai),
)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, Mapping):
        return Usage()
    return Usage(
        int_or_none(raw.get("prompt_tokens")) or 0, int_or_none(raw.get("completion_tokens")) or 0
    )


def _arguments_text(raw: Any) -> str:
    """Arguments as the raw JSON text; a few servers send an object instead of a string."""
    if isinstance(raw, str):
        return raw
    return "" if raw is None else json.dumps(raw)


def parse_completion(body: Mapping[str, Any]) -> ChatResponse:
    """A non-streaming `/v1/chat/completions` answer -> `ChatResponse`."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCall(
                id=str(call.get("id") or f"call_{index}"),
                name=str(call["function"]["name"]),
                arguments=_arguments_text(call["function"].get("arguments")),
            )
            for index, call in enumerate(message.get("tool_calls") or ())
        )
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise LLMResponseError(
            f"{CHAT_PATH} answered with something that is not a chat completion (missing {error})"
        ) from error
    return ChatResponse(
        content=message.get("content") or None,
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        reasoning=message.get("reasoning") or message.get("reasoning_content") or None,
        usage=_usage(body.get("usage")),
        model=body.get("model"),
        served=server_stats(body.get("stats")),
    )


def parse_embeddings(body: Mapping[str, Any], count: int) -> EmbedResponse:
    """A `/v1/embeddings` answer -> its vectors in input order (each entry's `index` says
    which input it belongs to: the OpenAI format does not promise the order)."""
    entries = _entries(body, "data")
    if entries is None or len(entries) != count:
        got = "no list of embeddings" if entries is None else f"{len(entries)} embeddings"
        raise LLMResponseError(f"{EMBEDDINGS_PATH} answered {got} for {count} inputs")
    vectors: list[tuple[float, ...] | None] = [None] * count
    for position, entry in enumerate(entries):
        index = int_or_none(entry.get("index"))
        index = position if index is None else index
        raw = entry.get("embedding")
        if not 0 <= index < count or not isinstance(raw, list) or not raw:
            raise LLMResponseError(f"{EMBEDDINGS_PATH} answered an entry that is not a vector")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
            raise LLMResponseError(f"{EMBEDDINGS_PATH} answered a vector that is not numbers")
        vectors[index] = tuple(float(x) for x in raw)
    if any(vector is None for vector in vectors):
        raise LLMResponseError(f"{EMBEDDINGS_PATH} answered the same input twice")
    return EmbedResponse(
        vectors=tuple(v for v in vectors if v is not None),
        usage=_usage(body.get("usage")),
        model=body.get("model") if isinstance(body.get("model"), str) else None,
    )


class StreamCollector:
    """Joins SSE chunks into one answer; tool-call pieces are joined by their `index`."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.token_chunks = 0
        self.stats: Mapping[str, Any] = {}
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.model: str | None = None
        self.chunks = 0

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, Mapping):
            raise LLMResponseError(f"{CHAT_PATH} streamed a chunk that is not a JSON object")
        self.chunks += 1
        fields = _error_fields(chunk) if "error" in chunk else None
        if fields:
            raise LLMResponseError(f"the server stopped the stream: {fields[0]}", code=fields[1])
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("stats"), Mapping):
            self.stats = chunk["stats"]
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if any(delta.get(k) for k in _TOKEN_KEYS):
                self.token_chunks += 1
                if self.first_token is None:
                    self.first_token = time.monotonic()
            if delta.get("content"):
                self.content.append(delta["content"])
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                self.reasoning.append(reasoning)
            for piece in delta.get("tool_calls") or ():
                self._add_call_piece(piece)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def _add_call_piece(self, piece: Mapping[str, Any]) -> None:
        index = piece.get("index", len(self.calls))
        slot = self.calls.setdefault(index, {"id": None, "name": "", "arguments": []})
        if piece.get("id"):
            slot["id"] = piece["id"]
        function = piece.get("function") or {}
        if function.get("name") and not slot["name"]:
            slot["name"] = function["name"]
        if function.get("arguments"):
            slot["arguments"].append(_arguments_text(function["arguments"]))

    def response(self) -> ChatResponse:
        calls = tuple(
            ToolCall(
                id=str(slot["id"] or f"call_{index}"),
                name=slot["name"],
                arguments="".join(slot["arguments"]),
            )
            for index, slot in sorted(self.calls.items())
        )
        served = self._timing()
        usage = self.usage
        if usage == Usage() and self.token_chunks:
            # No counts in the stream (llama.cpp's servers send one token per piece): the
            # pieces are the completion tokens; the prompt's are unknown.
            usage = Usage(0, self.token_chunks)
            served["usage_counted"] = True
        return ChatResponse(
            content="".join(self.content) if self.content else None,
            tool_calls=calls,
            finish_reason=self.finish_reason,
            reasoning="".join(self.reasoning) or None,
            usage=usage,
            model=self.model,
            served=served,
        )

    def _timing(self) -> dict[str, Any]:
        """Time to first token and tokens per second as measured here, unless the server
        reported its own (LM Studio's `stats`), which also says how long loading took."""
        ended = time.monotonic()
        timing: dict[str, Any] = {"streamed": True, "seconds": rounded(ended - self.started)}
        if self.first_token is not None:
            timing["ttft_s"] = rounded(self.first_token - self.started)
            generating = ended - self.first_token
            # Without usage in the stream (llama.cpp's servers), count the pieces: one token each.
            tokens = self.usage.completion_tokens or self.token_chunks
            if generating > 0:
                timing["tokens_per_s"] = rounded(tokens / generating)
        return {**timing, **server_stats(self.stats)}
