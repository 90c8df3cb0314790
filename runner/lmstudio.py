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
    CacheError,
    Catalog,
    ModelInfo,
    ModelState,
    StructuredMode,
    shared_cache,
)
from .chat import ChatRequest, ChatResponse, EmbedRequest, EmbedResponse
from .errors import (
    AuthenticationError,
    LLMClientError,
    LLMConnectionError,
    LLMResponseError,
    LLMTimeoutError,
    LLMTruncatedReplyError,
)
from .lmstudio_answers import (
    CHAT_PATH,
    EMBEDDINGS_PATH,
    MODEL_ENDPOINTS,
    ModelParser,
    StreamCollector,
    error_detail,
    int_or_none,
    json_object,
    loads_json,
    parse_completion,
    parse_embeddings,
    rounded,
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

    Use as `async with LMStudioClient(url) as client:`. Implements `runner.chat.ChatModel` and
    `runner.chat.EmbeddingModel`.
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
        self.vision_models: set[str] = set()
        """Requested model names the model check found to see images (`chat.sees_images`)."""
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
        for flavour, path, parse in MODEL_ENDPOINTS:
            models = await self._model_list(path, parse, timeout)
            if models is None:
                continue
            if use_lms and flavour != "openai" and is_loopback(self.base_url):
                processes = await asyncio.to_thread(lms_processes)
                if processes is not None:
                    models = with_lms_status(models, processes)
            return Catalog(self.base_url, flavour, models)
        paths = ", ".join(path for _, path, _ in MODEL_ENDPOINTS)
        raise LLMResponseError(
            f"{self.base_url} answered none of {paths} with a model list",
            hint="is this an LM Studio or OpenAI-compatible server?",
        )

    async def _model_list(
        self, path: str, parse: ModelParser, timeout: float
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
        data = json_object(response, "/api/v1/models/load")
        seconds = data.get("load_time_seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            self.loaded[model] = rounded(float(seconds))
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

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        """The vectors of `request.texts` from `/v1/embeddings`, in order. Retried like any
        request that is safe to repeat: computing an embedding again changes nothing."""
        model = (self.routes.get(request.model) or (request.model,))[0]
        payload = {"model": model, "input": list(request.texts)}
        response = await self._request(
            "POST", EMBEDDINGS_PATH, json=payload, timeout=self.timeout, retry_timeouts=True
        )
        answer = parse_embeddings(json_object(response, EMBEDDINGS_PATH), len(request.texts))
        return replace(answer, model=model)

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
        response = await self._request("POST", CHAT_PATH, json=payload, timeout=self.timeout)
        answer = parse_completion(json_object(response, CHAT_PATH))
        seconds = rounded(time.monotonic() - started)
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
        collector = StreamCollector()
        what = f"POST {CHAT_PATH}"
        done = False
        with self._translated(CHAT_PATH, self.timeout):
            async with self._http.stream("POST", CHAT_PATH, json=payload) as response:
                with self._whole_reply(response, what, collector):
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._response_error(response, what, payload)
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        # A server that does not stream answers the whole completion at once.
                        await response.aread()
                        return parse_completion(json_object(response, CHAT_PATH))
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[len("data:") :].strip()
                        # Past [DONE], read on to the end: a fully read response returns
                        # its connection to the pool.
                        if data == "[DONE]":
                            done = True
                        elif not done:
                            collector.add(loads_json(data, CHAT_PATH))
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
        self, response: httpx.Response, what: str, collector: StreamCollector | None = None
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
        collector: StreamCollector | None,
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
        queued = any((int_or_none(p.get("queued")) or 0) > 0 for p in found)
        idle = "idle" in statuses
        activity = "queued" if queued else ("idle" if idle else statuses[0] or None)
        refined.append(replace(model, state="idle" if idle else "loaded", activity=activity))
    return tuple(refined)
