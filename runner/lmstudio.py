"""The LM Studio client: chat completions and the model catalog over one httpx connection pool.

Speaks LM Studio's OpenAI-compatible API (`/v1/...`) and its native model API (`/api/v1`
since 0.4, `/api/v0` before), and falls back to plain `/v1/models` for other
OpenAI-compatible servers. Transient failures are retried; everything else becomes an
exception from `runner.errors` with a hint, so no caller ever sees an httpx error.

Import this module only from code that talks to a server: it imports httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from .catalog import (
    STRUCTURED_MODES,
    ApiFlavour,
    CacheError,
    Catalog,
    ModelInfo,
    ModelState,
    ModelType,
    StructuredMode,
    shared_cache,
)
from .chat import ChatRequest, ChatResponse, ToolCall, Usage
from .errors import (
    AuthenticationError,
    LLMClientError,
    LLMConnectionError,
    LLMResponseError,
    LLMTimeoutError,
    LLMTruncatedReplyError,
)
from .lmstudio_server import ServerConfig, WithheldToken, is_loopback
from .spec.model import DEFAULT_BASE_URL, DEFAULT_TOKEN_ENV

__all__ = ["Catalog", "LMStudioClient", "ModelInfo", "RetryPolicy"]

START_SERVER_HINT = (
    "start LM Studio's server with `lms server start` (or in the LM Studio app: Developer tab, "
    "switch the server on), or point lmflow elsewhere with --base-url or LMFLOW_BASE_URL"
)

CHAT_TIMEOUT = 300.0  # one chat request; long generations on a laptop take minutes
LIST_TIMEOUT = 10.0  # listing models is quick when the server is healthy
LOAD_TIMEOUT = 600.0  # loading a large model from disk
CONNECT_TIMEOUT = 5.0
LMS_TIMEOUT = 3.0

T = TypeVar("T")
_ModelParser = Callable[[Any], "tuple[ModelInfo, ...] | None"]


# --- retries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in total time.

    What is retried, and why:

    - a 5xx answer, or a connection that broke during a request: up to `attempts` in all,
      the server is busy or restarting and will likely answer the next one;
    - a server that refuses the connection (nothing listens): up to `refused_attempts` in
      all, so a server that is down is reported in about half a second, not after a minute;
    - a reply cut off mid-way (the connection closed inside the body, or a stream ended
      without a finish reason or `[DONE]`): up to `truncated_attempts` in all. Once may be a
      server that restarted; a reply cut again is cut for a reason (a crash on this request,
      a proxy's size limit) that asking again will not change;
    - a timeout: only where the caller says so (listing models, which is cheap to repeat). A
      chat completion that timed out is not retried: the server may still be generating it,
      and a new request would run the whole generation again. Loading a model neither;
    - a 4xx answer: never, asking again gets the same answer.

    `total` bounds when a new attempt may start (seconds after the first one began); it does
    not cut an attempt short, which is the request timeout's job.
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    total: float = 60.0
    refused_attempts: int = 2
    truncated_attempts: int = 2

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1-based): half fixed, half random."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def attempts_for(self, error: LLMClientError, *, retry_timeouts: bool) -> int:
        """How many attempts in all an operation failing with `error` may make."""
        if isinstance(error, (FormatRefusedError, EmptyStreamError)):
            return 1  # asked again in another form, not again as it was
        if isinstance(error, LLMConnectionError):
            refused = isinstance(error.__cause__, (httpx.ConnectError, httpx.ConnectTimeout))
            return self.refused_attempts if refused else self.attempts
        if isinstance(error, LLMTruncatedReplyError):
            return self.truncated_attempts
        if isinstance(error, LLMTimeoutError):
            return self.attempts if retry_timeouts else 1
        if isinstance(error, LLMResponseError) and (error.status_code or 0) >= 500:
            return self.attempts
        return 1


# --- the client -----------------------------------------------------------------------------


def tls_context(trust_env: bool) -> ssl.SSLContext:
    """httpx's default TLS context, built once per setting and shared by every client: loading
    the CA bundle takes ~15 ms, which every run (and every row of `lmflow batch`) would pay
    again. With `trust_env` it follows SSL_CERT_FILE / SSL_CERT_DIR as httpx does."""
    if not trust_env:
        return _tls_context(False, None, None)
    return _tls_context(True, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=8)
def _tls_context(trust_env: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=trust_env)


class LMStudioClient:
    """One connection pool to one server, shared by every request of a run.

    Use as `async with LMStudioClient(url) as client:`. Implements `runner.chat.ChatModel`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        token: str | None = None,
        token_env: str = DEFAULT_TOKEN_ENV,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        stream: bool = False,
        credentials: tuple[str, str] | None = None,
        withheld: WithheldToken | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout or CHAT_TIMEOUT
        self.retry = retry or RetryPolicy()
        self.stream = stream
        self.routes: dict[str, tuple[str, ...]] = {}
        """Requested model name -> the server's ids to try, in order (the model check's)."""
        self.loaded: dict[str, float] = {}
        """Models this client loaded (`load_model`), with LM Studio's load time in seconds."""
        self._modes: dict[str, StructuredMode] | None = None
        self._unstreamable: set[str] = set()
        self._token = token
        self._token_env = token_env
        self._withheld = withheld
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            auth=credentials,
            # Never follow a redirect: the token is for this server only (httpx would drop
            # it on a cross-host redirect anyway; a same-host one has no use here).
            follow_redirects=False,
            timeout=_timeouts(self.timeout),
            # A proxy from the environment must not swallow requests to this machine.
            trust_env=not is_loopback(self.base_url),
            verify=tls_context(trust_env=not is_loopback(self.base_url)),
        )

    @classmethod
    def from_config(cls, config: ServerConfig, **options: Any) -> LMStudioClient:
        return cls(
            config.base_url,
            token=config.token,
            token_env=config.token_env,
            timeout=config.timeout,
            credentials=config.credentials,
            withheld=config.withheld,
            **options,
        )

    def __repr__(self) -> str:
        return f"LMStudioClient({self.base_url!r}, token={'set' if self._token else 'none'})"

    async def __aenter__(self) -> LMStudioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- public operations -------------------------------------------------------------------

    async def list_models(self, *, use_lms: bool = True) -> Catalog:
        """The server's models from the richest API it speaks.

        Tries `/api/v1/models` (LM Studio 0.4+), `/api/v0/models` (0.3), then `/v1/models`
        (any OpenAI-compatible server). When LM Studio itself answered on this machine,
        `lms ps --json` adds whether a loaded model is idle or busy; behind a bare `/v1/models`
        is another server (Ollama, llama.cpp) that `lms` knows nothing about.
        """
        timeout = min(self.timeout, LIST_TIMEOUT)
        for flavour, path, parse in _MODEL_ENDPOINTS:
            models = await self._model_list(path, parse, timeout)
            if models is None:
                continue
            if use_lms and flavour != "openai" and is_loopback(self.base_url):
                processes = await asyncio.to_thread(lms_processes)
                if processes is not None:
                    models = with_lms_status(models, processes)
            return Catalog(self.base_url, flavour, models)
        paths = ", ".join(path for _, path, _ in _MODEL_ENDPOINTS)
        raise LLMResponseError(
            f"{self.base_url} answered none of {paths} with a model list",
            hint="is this an LM Studio or OpenAI-compatible server?",
        )

    async def _model_list(
        self, path: str, parse: _ModelParser, timeout: float
    ) -> tuple[ModelInfo, ...] | None:
        """The models at `path`, or None when this server does not speak that API: a 404, or
        (old LM Studio) a 200 whose body is `{"error": ...}` instead of a list."""
        try:
            response = await self._request("GET", path, timeout=timeout, retry_timeouts=True)
        except LLMResponseError as error:
            if error.status_code in (404, 405):
                return None
            raise
        try:
            return parse(response.json())
        except ValueError:
            return None

    async def load_model(self, model: str) -> str:
        """Load `model` now (blocks until loaded); returns the new instance id."""
        timeout = max(self.timeout, LOAD_TIMEOUT)
        response = await self._request(
            "POST", "/api/v1/models/load", json={"model": model}, timeout=timeout
        )
        data = _json_object(response, "/api/v1/models/load")
        seconds = data.get("load_time_seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            self.loaded[model] = _rounded(float(seconds))
        return str(data.get("model_instance_id") or model)

    async def chat(self, request: ChatRequest, *, stream: bool | None = None) -> ChatResponse:
        """One chat completion. Streaming gives the same `ChatResponse`, assembled from pieces.

        `request.model` goes out as the server's own id for it (`routes`, set by the model
        check); when the route lists several models, one that fails (not there, unloaded,
        a 5xx after retries, a reply cut off) hands the request to the next. `served` says
        which model answered, how, and how fast."""
        streaming = self.stream if stream is None else stream
        candidates = self.routes.get(request.model) or (request.model,)
        failed: list[dict[str, str]] = []
        for model in candidates[:-1]:
            try:
                return _after(failed, await self._chat_structured(request, model, streaming))
            except LLMClientError as error:
                if not _model_failed(error):
                    raise
                failed.append({"model": model, "error": error.message})
        return _after(failed, await self._chat_structured(request, candidates[-1], streaming))

    async def _chat_structured(
        self, request: ChatRequest, model: str, streaming: bool
    ) -> ChatResponse:
        """Ask `model`; a schema goes in the best form the server takes (learned from its
        refusal once, then remembered with the model catalog)."""
        payload = {**request.payload(), "model": model, "stream": streaming}
        if streaming:  # OpenAI's way to have the token counts in a stream (LM Studio, vLLM)
            payload["stream_options"] = {"include_usage": True}
        mode = self._structured_mode(model) if _schema_of(payload) is not None else None
        while True:
            body = payload if mode is None else structured_payload(payload, mode)
            try:
                response = await self._chat_once(body)
            except FormatRefusedError:
                lower = _next_mode(mode)
                if lower is None:
                    raise
                self._learn(model, lower)
                mode = lower
                continue
            served = {"model": model, **response.served}
            if mode is not None:
                served["response_format"] = mode
            return replace(response, model=model, served=served)

    async def _chat_once(self, payload: Mapping[str, Any]) -> ChatResponse:
        kind = _stream_kind(payload)
        if payload["stream"] and kind not in self._unstreamable:
            try:
                return await self._retrying(
                    lambda: self._chat_stream(payload), retry_timeouts=False
                )
            except EmptyStreamError:
                # llama-cpp-python cannot stream some requests (tools with tool_choice auto):
                # it sends the headers, then nothing. Such requests go unstreamed from now on.
                self._unstreamable.add(kind)
        payload = {k: v for k, v in payload.items() if k != "stream_options"}
        payload["stream"] = False
        started = time.monotonic()
        response = await self._request("POST", _CHAT_PATH, json=payload, timeout=self.timeout)
        answer = parse_completion(_json_object(response, _CHAT_PATH))
        seconds = _rounded(time.monotonic() - started)
        return replace(answer, served={"seconds": seconds, **answer.served})

    def _structured_mode(self, model: str) -> StructuredMode:
        """The best form known to work for `model` here: this run's finding, else the cache's."""
        if self._modes is None:
            self._modes = {}
            with contextlib.suppress(*CacheError):
                self._modes = shared_cache().structured_modes(self.base_url)
        return self._modes.get(model, STRUCTURED_MODES[0])

    def _learn(self, model: str, mode: StructuredMode) -> None:
        assert self._modes is not None
        self._modes[model] = mode
        with contextlib.suppress(*CacheError):
            shared_cache().put_structured_mode(self.base_url, model, mode)

    # --- transport ---------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        json: Any = None,
        retry_timeouts: bool = False,
    ) -> httpx.Response:
        """One request with retries (see `RetryPolicy`); answers >= 400 raise."""

        what = f"{method} {path}"

        async def attempt() -> httpx.Response:
            with self._translated(path, timeout):
                async with self._http.stream(
                    method, path, json=json, timeout=_timeouts(timeout)
                ) as response:
                    with self._whole_reply(response, what):
                        await response.aread()
            if response.status_code >= 400:
                raise self._response_error(response, what, json)
            return response

        return await self._retrying(attempt, retry_timeouts=retry_timeouts)

    async def _chat_stream(self, payload: Mapping[str, Any]) -> ChatResponse:
        collector = _StreamCollector()
        what = f"POST {_CHAT_PATH}"
        done = False
        with self._translated(_CHAT_PATH, self.timeout):
            async with self._http.stream("POST", _CHAT_PATH, json=payload) as response:
                with self._whole_reply(response, what, collector):
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._response_error(response, what, payload)
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        # A server that does not stream answers the whole completion at once.
                        await response.aread()
                        return parse_completion(_json_object(response, _CHAT_PATH))
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[len("data:") :].strip()
                        # Past [DONE], read on to the end: a fully read response returns
                        # its connection to the pool.
                        if data == "[DONE]":
                            done = True
                        elif not done:
                            collector.add(_loads(data, _CHAT_PATH))
                # A server that omits [DONE] still ends a whole answer with a finish reason.
                if not done and collector.finish_reason is None:
                    error = self._truncated(
                        response, what, collector, "the stream ended without a finish reason"
                    )
                    if collector.chunks == 0:
                        raise EmptyStreamError(error.message, hint=error.hint)
                    raise error
        return collector.response()

    async def _retrying(self, operation: Callable[[], Awaitable[T]], *, retry_timeouts: bool) -> T:
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return await operation()
            except LLMClientError as error:
                limit = self.retry.attempts_for(error, retry_timeouts=retry_timeouts)
                pause = self.retry.delay(attempt)
                out_of_time = time.monotonic() - started + pause > self.retry.total
                if attempt >= limit or out_of_time:
                    if attempt > 1:
                        error.message = f"{error.message} (gave up after {attempt} attempts)"
                        error.args = (error.message,)
                    raise
            attempt += 1
            await asyncio.sleep(pause)

    @contextlib.contextmanager
    def _translated(self, path: str, timeout: float) -> Iterator[None]:
        """httpx transport errors -> lmflow errors that say which URL and what to do."""
        try:
            yield
        except httpx.ConnectTimeout as error:
            raise LLMConnectionError(
                f"cannot reach LM Studio at {self.base_url} (no connection within "
                f"{min(CONNECT_TIMEOUT, timeout):g} s)",
                hint=START_SERVER_HINT,
            ) from error
        except httpx.TimeoutException as error:
            raise LLMTimeoutError(
                f"{self.base_url}{path} did not answer within {timeout:g} s",
                hint="the model may still be loading or the machine is busy; "
                "raise lmstudio.timeout in the workflow if this is expected",
            ) from error
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            raise LLMConnectionError(
                f"cannot reach LM Studio at {self.base_url} ({self._redact(reason)})",
                hint=START_SERVER_HINT,
            ) from error

    @contextlib.contextmanager
    def _whole_reply(
        self, response: httpx.Response, what: str, collector: _StreamCollector | None = None
    ) -> Iterator[None]:
        """A connection that breaks inside the body -> a truncated reply, not "cannot reach":
        the server was reached, and its answer is partial."""
        try:
            yield
        except (httpx.RemoteProtocolError, httpx.ReadError) as error:
            reason = self._redact(str(error) or type(error).__name__)
            raise self._truncated(response, what, collector, reason) from error

    def _truncated(
        self,
        response: httpx.Response,
        what: str,
        collector: _StreamCollector | None,
        reason: str,
    ) -> LLMTruncatedReplyError:
        size = f"{response.num_bytes_downloaded:,} bytes"
        if collector is not None:
            size += f" ({collector.chunks:,} chunks)"
        return LLMTruncatedReplyError(
            f"truncated reply: the answer of {self.base_url} to {what} was cut off after "
            f"{size}: {reason}",
            hint="the server closed the reply early: it may have crashed or run out of memory "
            "(see LM Studio's developer log), or a proxy in between cut it; try again, or "
            "lower max_tokens",
        )

    def _response_error(
        self, response: httpx.Response, what: str, sent: Any = None
    ) -> LLMResponseError:
        message, code = error_detail(response)
        message = self._redact(message)
        status = response.status_code
        hint: str | None
        if status in (401, 403):
            if self._token:
                hint = f"the token in ${self._token_env} was rejected; check it in LM Studio"
            elif self._withheld is not None:
                hint = f"{self._withheld.message}; {self._withheld.hint}"
            else:
                hint = (
                    f"the server requires an API token: set ${self._token_env} "
                    "(LM Studio: Developer tab, server settings, manage tokens)"
                )
            return AuthenticationError(
                f"{self.base_url} refused {what} ({status}): {message}",
                status_code=status,
                code=code,
                hint=hint,
            )
        if (
            isinstance(sent, Mapping)
            and "response_format" in sent
            and _FORMAT_WORDS.search(message)
        ):
            return FormatRefusedError(
                f"{self.base_url} refused the response_format of {what} ({status}): {message}",
                status_code=status,
                code=code,
                hint="the server cannot constrain answers to this form; lmflow asks in the "
                "next form it knows (docs/lmstudio.md, structured output)",
            )
        hint = (
            "run `lmflow models` to see what the server has" if code == "model_not_found" else None
        )
        return LLMResponseError(
            f"{self.base_url} answered {status} to {what}: {message}",
            status_code=status,
            code=code,
            hint=hint,
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


_CHAT_PATH = "/v1/chat/completions"
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
            found[name] = _rounded(float(value))
    return found


def _rounded(seconds: float) -> float:
    return round(seconds, 3)


# --- structured output and fallback ------------------------------------------------------


class FormatRefusedError(LLMResponseError):
    """The server refused the request's `response_format` (llama.cpp: 500 "Input should be
    'text' or 'json_object'"; LM Studio: 400 for json_object): ask in the next form."""


class EmptyStreamError(LLMTruncatedReplyError):
    """A stream that ended before its first piece: the server accepted the request but could
    not stream it. The same request goes once more without streaming."""


def _stream_kind(payload: Mapping[str, Any]) -> str:
    """What a server may be unable to stream: requests with tools, or without."""
    return "tools" if payload.get("tools") else "plain"


_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object", re.IGNORECASE)
_SCHEMA_INSTRUCTION = "Reply with only a JSON object that matches this JSON schema:\n"


def _schema_of(payload: Mapping[str, Any]) -> Any:
    """The schema of a json_schema `response_format`, or None for any other request."""
    wanted = payload.get("response_format")
    if not isinstance(wanted, Mapping) or wanted.get("type") != "json_schema":
        return None
    spec = wanted.get("json_schema")
    return spec.get("schema") if isinstance(spec, Mapping) else None


def structured_payload(payload: Mapping[str, Any], mode: StructuredMode) -> dict[str, Any]:
    """The json_schema request `payload` asked in the form `mode`. Every form but json_schema
    also states the schema in the last user message: json_object alone says nothing of the
    shape, and a server without `response_format` has only the prompt."""
    schema = _schema_of(payload)
    body = dict(payload)
    if schema is None or mode == "json_schema":
        return body
    if mode == "prompt":
        del body["response_format"]
    elif mode == "json_object":
        body["response_format"] = {"type": "json_object"}
    else:
        body["response_format"] = {"type": "json_object", "schema": schema}
    body["messages"] = _with_instruction(
        payload["messages"], _SCHEMA_INSTRUCTION + json.dumps(schema)
    )
    return body


def _with_instruction(messages: Sequence[Mapping[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` added to the last user message (a new user turn would break chat templates that
    insist on alternating roles), or as a user message when the last is not one."""
    out = [dict(m) for m in messages]
    if out and out[-1].get("role") == "user" and isinstance(out[-1].get("content"), str):
        out[-1]["content"] = f"{out[-1]['content']}\n\n{text}"
    else:
        out.append({"role": "user", "content": text})
    return out


def _next_mode(mode: StructuredMode | None) -> StructuredMode | None:
    if mode is None or mode == STRUCTURED_MODES[-1]:
        return None
    return STRUCTURED_MODES[STRUCTURED_MODES.index(mode) + 1]


def _after(failed: list[dict[str, str]], response: ChatResponse) -> ChatResponse:
    """The answer, noting the models that failed before it (`served.fallback_from`)."""
    if not failed:
        return response
    return replace(response, served={**response.served, "fallback_from": failed})


def _model_failed(error: LLMClientError) -> bool:
    """Whether the model, not the request or the server as a whole, failed: it is not there
    or not loaded, it crashed mid-reply, or it kept answering 5xx. Another model may do."""
    if isinstance(error, LLMTruncatedReplyError):
        return True
    if not isinstance(error, LLMResponseError) or isinstance(error, AuthenticationError):
        return False
    status = error.status_code or 0
    if status >= 500 or error.code == "model_not_found":
        return True
    return status in (400, 404) and "model" in error.message.lower()


def _timeouts(seconds: float) -> httpx.Timeout:
    """`seconds` for the answer, but a server that is not there is known within seconds."""
    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT, seconds))


# --- parsing server answers -----------------------------------------------------------------


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


def _loads(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise LLMResponseError(f"{path} sent something that is not JSON: {text[:200]!r}") from error


def _json_object(response: httpx.Response, path: str) -> Mapping[str, Any]:
    body = _loads(response.text, path)
    if not isinstance(body, Mapping):
        raise LLMResponseError(f"{path} answered with JSON that is not an object")
    fields = _error_fields(body) if "error" in body else None
    if fields:  # some servers answer errors with status 200
        raise LLMResponseError(f"{path} answered with an error: {fields[0]}", code=fields[1])
    return body


def _int(value: Any) -> int | None:
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
        contexts = [_int((i.get("config") or {}).get("context_length")) for i in instances]
        tool_use = capabilities.get("trained_for_tool_use")
        models.append(
            ModelInfo(
                id=entry["key"],
                type=kind,
                state="loaded" if instances else "not-loaded",
                max_context_length=_int(entry.get("max_context_length")),
                loaded_context_length=next((c for c in contexts if c), None),
                tool_use=tool_use if isinstance(tool_use, bool) else None,
                variants=_variant_names(entry.get("variants")),
                quantization=quantization if isinstance(quantization, str) else None,
                instances=tuple(str(i["id"]) for i in instances if "id" in i),
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
                max_context_length=_int(entry.get("max_context_length")),
                loaded_context_length=_int(entry.get("loaded_context_length")),
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


_MODEL_ENDPOINTS: tuple[tuple[ApiFlavour, str, _ModelParser], ...] = (
    ("native-v1", "/api/v1/models", models_native_v1),
    ("native-v0", "/api/v0/models", models_native_v0),
    ("openai", "/v1/models", models_openai),
)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, Mapping):
        return Usage()
    return Usage(_int(raw.get("prompt_tokens")) or 0, _int(raw.get("completion_tokens")) or 0)


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
            f"{_CHAT_PATH} answered with something that is not a chat completion (missing {error})"
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


class _StreamCollector:
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
            raise LLMResponseError(f"{_CHAT_PATH} streamed a chunk that is not a JSON object")
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
        timing: dict[str, Any] = {"streamed": True, "seconds": _rounded(ended - self.started)}
        if self.first_token is not None:
            timing["ttft_s"] = _rounded(self.first_token - self.started)
            generating = ended - self.first_token
            # Without usage in the stream (llama.cpp's servers), count the pieces: one token each.
            tokens = self.usage.completion_tokens or self.token_chunks
            if generating > 0:
                timing["tokens_per_s"] = _rounded(tokens / generating)
        return {**timing, **server_stats(self.stats)}


# --- the `lms` CLI --------------------------------------------------------------------------


def lms_processes(timeout: float = LMS_TIMEOUT) -> list[Mapping[str, Any]] | None:
    """`lms ps --json` when `lms` is on PATH; None when it is missing, slow or says nothing
    useful. Only ever a refinement of what the server said, so every failure is ignored."""
    executable = shutil.which("lms")
    if executable is None:
        return None
    try:
        done = subprocess.run(
            [executable, "ps", "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        data = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return [item for item in data if isinstance(item, Mapping)] if isinstance(data, list) else None


def with_lms_status(
    models: Sequence[ModelInfo], processes: Sequence[Mapping[str, Any]]
) -> tuple[ModelInfo, ...]:
    """Refine states with `lms ps`: IDLE is loaded and free, others are loaded and busy.

    `lms` lists every loaded model of this machine, so a model of unknown state that it does
    not list is not loaded.
    """
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for process in processes:
        key = process.get("modelKey") or process.get("identifier")
        if isinstance(key, str):
            by_key.setdefault(key, []).append(process)
    refined = []
    for model in models:
        found = by_key.get(model.id) or by_key.get(model.name)
        if not found:
            state: ModelState = "not-loaded" if model.state == "unknown" else model.state
            refined.append(replace(model, state=state))
            continue
        statuses = [str(p.get("status") or "").lower() for p in found]
        queued = any((_int(p.get("queued")) or 0) > 0 for p in found)
        idle = "idle" in statuses
        activity = "queued" if queued else ("idle" if idle else statuses[0] or None)
        refined.append(replace(model, state="idle" if idle else "loaded", activity=activity))
    return tuple(refined)
