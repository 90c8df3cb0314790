"""The LM Studio client against the fake LM Studio, over real sockets."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel, down_url, install_fake_lms

from runner.chat import ChatRequest, ChatResponse, ToolCall, Usage
from runner.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INVALID,
    AuthenticationError,
    ConfigurationError,
    LLMConnectionError,
    LLMResponseError,
    LLMTimeoutError,
    LLMTruncatedReplyError,
)
from runner.lmstudio import LMStudioClient, RetryPolicy, with_lms_status
from runner.lmstudio_answers import models_native_v1
from runner.lmstudio_server import ServerConfig, is_loopback, resolve_base_url, resolve_server
from runner.spec.model import LMStudioSettings

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.02, total=10)
CODER = "qwen/qwen3-coder-30b"


def client(server: FakeLMStudio | str, **options: object) -> LMStudioClient:
    url = server if isinstance(server, str) else server.url
    options.setdefault("retry", FAST)
    return LMStudioClient(url, **options)  # type: ignore[arg-type]


def ask(text: str = "hello", **fields: object) -> ChatRequest:
    return ChatRequest(CODER, ({"role": "user", "content": text},), **fields)  # type: ignore[arg-type]


# --- where the server is ---------------------------------------------------------------------


def test_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url(None, None) == "http://localhost:1234"
    assert resolve_base_url(None, "http://wf:1/") == "http://wf:1"
    monkeypatch.setenv("LMFLOW_BASE_URL", "http://env:2")
    assert resolve_base_url(None, "http://wf:1") == "http://env:2"
    assert resolve_base_url("http://cli:3/v1/", "http://wf:1") == "http://cli:3"


def test_bad_base_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="--base-url") as caught:
        resolve_base_url("localhost:1234", None)
    assert caught.value.exit_code == EXIT_INVALID


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://localhost:99999", "--base-url"),  # port out of range
        ("http://[::1", "--base-url"),  # unclosed IPv6 bracket
        ("http://localhost:port", "--base-url"),
        ("http://:1234", "--base-url"),  # no host
    ],
)
def test_a_malformed_base_url_is_a_configuration_error_naming_its_origin(
    url: str, origin: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{origin} ") as caught:
        resolve_base_url(url, None)
    assert caught.value.exit_code == EXIT_INVALID


def test_a_malformed_base_url_from_env_or_workflow_names_that_origin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match=r"^lmstudio\.base_url "):
        resolve_base_url(None, "http://[::1")
    monkeypatch.setenv("LMFLOW_BASE_URL", "http://localhost:99999")
    with pytest.raises(ConfigurationError, match=r"^LMFLOW_BASE_URL "):
        resolve_base_url(None, None)


def test_token_comes_from_the_named_env_var_and_stays_out_of_reprs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_TOKEN", "s3cret-token")
    server = resolve_server(None, LMStudioSettings(token_env="MY_TOKEN"))
    assert server.token == "s3cret-token"
    assert "s3cret" not in repr(server)
    assert "s3cret" not in repr(LMStudioClient.from_config(server))
    assert resolve_server(None, LMStudioSettings()).token is None


def test_loopback_detection() -> None:
    assert is_loopback("http://localhost:1234")
    assert is_loopback("http://127.0.0.5:1")
    assert is_loopback("http://[::1]:1")
    assert not is_loopback("http://192.168.1.20:1234")
    assert not is_loopback("http://lmstudio.example.com")


# --- the model list --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "flavour", "paths"),
    [
        ("v1", "native-v1", ["/api/v1/models"]),
        ("v0", "native-v0", ["/api/v1/models", "/api/v0/models"]),
        ("openai", "openai", ["/api/v1/models", "/api/v0/models", "/v1/models"]),
    ],
)
async def test_model_list_from_each_api_flavour(
    make_fake_lmstudio, api: str, flavour: str, paths: list[str]
) -> None:
    lm = make_fake_lmstudio(api=api)
    async with client(lm) as llm:
        catalog = await llm.list_models()
    assert catalog.flavour == flavour
    assert catalog.server == lm.url
    assert [r.path for r in lm.requests] == paths
    assert [m.id for m in catalog.models] == [m.key for m in lm.models]
    by_id = {m.id: m for m in catalog.models}
    embedding = by_id["text-embedding-nomic-embed-text-v1.5"]
    assert embedding.type == "embedding"
    coder = by_id[CODER]
    if api == "openai":
        assert (coder.state, coder.tool_use, coder.max_context_length) == ("unknown", None, None)
    else:
        assert coder.state == "loaded" and coder.ready
        assert (coder.max_context_length, coder.loaded_context_length) == (262144, 8192)
        assert coder.tool_use is True
        assert by_id["google/gemma-3-270m"].tool_use is False
        assert by_id["mistralai/magistral-small-2509"].state == "not-loaded"
        assert not by_id["mistralai/magistral-small-2509"].ready
        assert by_id["qwen/qwen2.5-vl-7b"].type == "vlm"


async def test_native_v1_variants_and_quantization(make_fake_lmstudio) -> None:
    model = FakeModel("qwen/qwen3-8b", variants=("qwen/qwen3-8b@q4_k_m", "qwen/qwen3-8b@q8_0"))
    lm = make_fake_lmstudio(models=[model])
    async with client(lm) as llm:
        (info,) = (await llm.list_models()).models
    assert info.variants == ("qwen/qwen3-8b@q4_k_m", "qwen/qwen3-8b@q8_0")
    assert info.quantization == "Q4_K_M"


def test_an_error_answered_with_200_is_not_a_model_list() -> None:
    # Old LM Studio answers unknown paths with 200 and {"error": ...}: try the next API.
    assert (
        models_native_v1({"error": "Unexpected endpoint or method. (GET /api/v1/models)"}) is None
    )


async def test_load_model(fake_lmstudio: FakeLMStudio) -> None:
    async with client(fake_lmstudio) as llm:
        instance = await llm.load_model("mistralai/magistral-small-2509")
        catalog = await llm.list_models()
    assert instance == "mistralai/magistral-small-2509"
    (load,) = [r for r in fake_lmstudio.requests if r.path == "/api/v1/models/load"]
    assert load.method == "POST"
    assert load.body == {"model": "mistralai/magistral-small-2509"}
    assert {m.id: m.state for m in catalog.models}["mistralai/magistral-small-2509"] == "loaded"


# --- lms ps enrichment -----------------------------------------------------------------------


async def test_lms_ps_refines_states(
    make_fake_lmstudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processes = [
        {
            "modelKey": CODER,
            "identifier": CODER,
            "status": "generating",
            "queued": 2,
            "type": "llm",
        },
        {"modelKey": "google/gemma-3-270m", "identifier": "g", "status": "idle", "type": "llm"},
    ]
    monkeypatch.setenv("PATH", f"{install_fake_lms(tmp_path, processes)}")
    lm = make_fake_lmstudio(api="v0")
    async with client(lm) as llm:
        models = {m.id: m for m in (await llm.list_models()).models}
    assert (models[CODER].state, models[CODER].activity) == ("loaded", "queued")
    assert (models["google/gemma-3-270m"].state, models["google/gemma-3-270m"].ready) == (
        "idle",
        True,
    )
    assert models["mistralai/magistral-small-2509"].state == "not-loaded"


def test_lms_marks_models_of_unknown_state_it_does_not_list_as_not_loaded() -> None:
    from runner.catalog import ModelInfo

    # lms lists every loaded model of this machine: the rest are not loaded.
    refined = with_lms_status([ModelInfo("a"), ModelInfo("b")], [{"modelKey": "a", "status": "x"}])
    assert [(m.id, m.state) for m in refined] == [("a", "loaded"), ("b", "not-loaded")]


async def test_lms_is_not_asked_about_a_server_that_is_not_lm_studio(
    make_fake_lmstudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ollama or llama.cpp on this machine: `lms ps` describes LM Studio, not this server.
    processes = [{"modelKey": CODER, "status": "idle"}]
    monkeypatch.setenv("PATH", f"{install_fake_lms(tmp_path, processes)}")
    lm = make_fake_lmstudio(api="openai")
    async with client(lm) as llm:
        models = {m.id: m for m in (await llm.list_models()).models}
    assert {m.state for m in models.values()} == {"unknown"}
    assert models[CODER].activity is None


async def test_a_broken_lms_is_ignored(
    fake_lmstudio: FakeLMStudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lms = tmp_path / "lms"
    lms.write_text("#!/bin/sh\necho 'not json'\n")
    lms.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    async with client(fake_lmstudio) as llm:
        models = {m.id: m for m in (await llm.list_models()).models}
    assert models[CODER].state == "loaded"
    assert models[CODER].activity is None


def test_lms_status_matches_short_ids() -> None:
    from runner.catalog import ModelInfo

    (model,) = with_lms_status(
        [ModelInfo("qwen3-8b", state="loaded")], [{"modelKey": "qwen/qwen3-8b", "status": "IDLE"}]
    )
    assert (model.state, model.activity) == ("loaded", None)  # different key: not the same
    (model,) = with_lms_status(
        [ModelInfo("qwen3-8b")], [{"modelKey": "qwen3-8b", "status": "IDLE"}]
    )
    assert (model.state, model.activity) == ("idle", "idle")


# --- chat ------------------------------------------------------------------------------------


async def test_chat_sends_the_request_and_parses_the_answer(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(
        script=[{"content": "42", "reasoning": "think", "tool_calls": None}],
    )
    tools = ({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    request = ask("what?", tools=tools, tool_choice="required", response_format=schema)
    async with client(lm) as llm:
        answer = await llm.chat(request)
    assert answer == ChatResponse(
        content="42", finish_reason="stop", reasoning="think", usage=Usage(1, 1), model=CODER
    )
    (sent,) = lm.chat_requests
    assert sent["stream"] is False
    assert sent["tools"] == [dict(tools[0])]
    assert (sent["tool_choice"], sent["response_format"]) == ("required", schema)


async def test_tool_calls_keep_raw_arguments(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(script=[[("read", {"path": "a.txt"}), ("write", '{"path": ')]])
    async with client(lm) as llm:
        answer = await llm.chat(ask())
    assert answer.finish_reason == "tool_calls"
    assert answer.tool_calls == (
        ToolCall("call_0_0", "read", '{"path": "a.txt"}'),
        ToolCall("call_0_1", "write", '{"path": '),  # invalid JSON reaches the engine as is
    )


@pytest.mark.parametrize(
    "item",
    [
        "a longer answer, streamed in many small pieces",
        [("list_directory", {"path": "/tmp/project"}), ("read_text_file", {"path": "/a/b.py"})],
        {"content": "done", "reasoning_content": "a chain of thought"},
    ],
    ids=["text", "tool-calls", "reasoning"],
)
async def test_streaming_gives_the_same_answer(make_fake_lmstudio, item: object) -> None:
    lm = make_fake_lmstudio(script=[item, item])
    async with client(lm) as llm:
        plain = await llm.chat(ask())
        streamed = await llm.chat(ask(), stream=True)
    # Tool-call ids differ per turn; everything else is the same.
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        (c.name, c.arguments) for c in plain.tool_calls
    ]
    assert replace(streamed, tool_calls=()) == replace(plain, tool_calls=())
    assert streamed.content or streamed.tool_calls
    assert [body["stream"] for body in lm.chat_requests] == [False, True]


async def test_client_streams_by_default_when_asked(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(script=[[("f", {"x": 1})]])
    async with client(lm, stream=True) as llm:
        answer = await llm.chat(ask())
    assert answer.tool_calls == (ToolCall("call_0_0", "f", '{"x": 1}'),)
    assert lm.chat_requests[0]["stream"] is True


async def test_one_connection_is_reused_by_every_request(fake_lmstudio: FakeLMStudio) -> None:
    async with client(fake_lmstudio) as llm:
        await llm.list_models()
        for stream in (False, True, False, True):
            await llm.chat(ask(), stream=stream)
    assert len(fake_lmstudio.requests) == 5
    assert len({r.client_port for r in fake_lmstudio.requests}) == 1


async def test_script_records_tool_results_fed_back(make_fake_lmstudio) -> None:
    def check(request: dict) -> str:
        tool_message = request["messages"][-1]
        return f"saw {tool_message['role']} {tool_message['content']}"

    lm = make_fake_lmstudio(script=[[("now", {})], check])
    async with client(lm) as llm:
        first = await llm.chat(ask())
        follow_up = ChatRequest(
            CODER,
            (
                {"role": "user", "content": "time?"},
                first.assistant_message(),
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "12:00"},
            ),
        )
        second = await llm.chat(follow_up)
        with pytest.raises(LLMResponseError, match="only 2 turns"):
            await llm.chat(ask())
    assert second.content == "saw tool 12:00"
    assert lm.chat_requests[1]["messages"][1]["tool_calls"][0]["function"]["name"] == "now"


# --- errors and retries ----------------------------------------------------------------------


async def test_two_503s_are_retried(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(fail_times=2)
    async with client(lm) as llm:
        catalog = await llm.list_models()
    assert catalog.flavour == "native-v1"
    assert lm.count("/api/v1/models") == 3


async def test_retries_are_bounded_in_attempts(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(fail_times=100)
    async with client(lm, retry=RetryPolicy(attempts=3, base_delay=0.01)) as llm:
        with pytest.raises(LLMResponseError) as caught:
            await llm.chat(ask())
    assert caught.value.status_code == 503
    assert "gave up after 3 attempts" in caught.value.message
    assert len(lm.requests) == 3


async def test_retries_are_bounded_in_total_time(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(fail_times=1000)
    policy = RetryPolicy(attempts=1000, base_delay=0.05, max_delay=0.05, total=0.3)
    async with client(lm, retry=policy) as llm:
        with pytest.raises(LLMResponseError):
            await llm.list_models()
    assert 2 <= len(lm.requests) < 1000


async def test_4xx_is_not_retried_and_the_object_error_is_parsed(fake_lmstudio) -> None:
    async with client(fake_lmstudio) as llm:
        with pytest.raises(LLMResponseError) as caught:
            await llm.chat(ChatRequest("no/such-model", ({"role": "user", "content": "x"},)))
    error = caught.value
    assert (error.status_code, error.code) == (400, "model_not_found")
    assert 'Invalid model identifier "no/such-model"' in error.message
    assert "lmflow models" in (error.hint or "")
    assert error.exit_code == EXIT_ENVIRONMENT
    assert len(fake_lmstudio.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_the_string_shaped_error_is_parsed(make_fake_lmstudio, stream: bool) -> None:
    body = {"error": "No models loaded. Please load a model in the developer page."}
    lm = make_fake_lmstudio(chat_error=(400, body))
    async with client(lm) as llm:
        with pytest.raises(LLMResponseError) as caught:
            await llm.chat(ask(), stream=stream)
    assert caught.value.status_code == 400
    assert caught.value.code is None
    assert "No models loaded. Please load a model" in caught.value.message
    assert len(lm.requests) == 1


async def test_a_timed_out_model_list_is_retried(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(delay=2.0)
    retry = RetryPolicy(attempts=2, base_delay=0.01)
    async with client(lm, timeout=0.3, retry=retry) as llm:
        with pytest.raises(LLMTimeoutError) as caught:
            await llm.list_models()
    assert "did not answer within 0.3 s" in caught.value.message
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    assert lm.count("/api/v1/models") == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_a_timed_out_chat_completion_is_not_run_again(
    make_fake_lmstudio, stream: bool
) -> None:
    # The server may still be generating: asking again would start the whole generation anew.
    lm = make_fake_lmstudio(delay=2.0)
    async with client(lm, timeout=0.3) as llm:
        with pytest.raises(LLMTimeoutError, match=r"did not answer within 0\.3 s") as caught:
            await llm.chat(ask(), stream=stream)
    assert "gave up" not in caught.value.message
    assert len(lm.chat_requests) == 1


async def test_a_connection_dropped_mid_request_is_retried_in_full() -> None:
    # A server that accepts and hangs up at once, as one that is restarting may.
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    accepted.append(connection)
                    connection.close()

        threading.Thread(target=serve, daemon=True).start()
        async with client(f"http://127.0.0.1:{port}") as llm:
            with pytest.raises(LLMConnectionError) as caught:
                await llm.chat(ask())
    assert "gave up after 4 attempts" in caught.value.message
    assert len(accepted) == 4


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_reply_cut_mid_body_is_reported_as_truncated(
    make_fake_lmstudio, stream: bool
) -> None:
    lm = make_fake_lmstudio(script=["a long enough answer to be cut"] * 5, cut_body=40)
    async with client(lm) as llm:
        with pytest.raises(LLMTruncatedReplyError) as caught:
            await llm.chat(ask(), stream=stream)
    message = caught.value.message
    assert message.startswith("truncated reply:")
    assert "cannot reach" not in message
    # The fake cuts after 40 bytes on the wire; a stream's first 4 are chunk framing ("B4\r\n").
    assert f"cut off after {36 if stream else 40} bytes" in message
    assert "gave up after 2 attempts" in message
    assert caught.value.hint and "try again" in caught.value.hint
    assert caught.value.exit_code == 3
    assert len(lm.chat_requests) == 2  # retried once, not four times


async def test_a_reply_cut_once_is_answered_by_the_retry(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(script=["first", "second"], cut_body=10, cut_times=1)
    async with client(lm) as llm:
        answer = await llm.chat(ask())
    assert answer.content == "second"
    assert len(lm.chat_requests) == 2


async def test_a_stream_that_ends_without_finish_reason_or_done_is_truncated(
    make_fake_lmstudio,
) -> None:
    lm = make_fake_lmstudio(script=["half an answer"] * 2, end_stream_early=True)
    async with client(lm) as llm:
        with pytest.raises(LLMTruncatedReplyError) as caught:
            await llm.chat(ask(), stream=True)
    message = caught.value.message
    assert "the stream ended without a finish reason" in message
    # role + "half " + "an an" + "swer": four chunks, and the bytes the server sent
    assert "(4 chunks)" in message
    assert "cannot reach" not in message


async def test_down_server_names_the_url_and_how_to_start_it() -> None:
    url = down_url()
    async with client(url) as llm:
        with pytest.raises(LLMConnectionError) as caught:
            await llm.list_models()
    assert url in caught.value.message
    # Nothing listens: asked once more, not for a minute, so `validate` and `doctor` say so
    # at once.
    assert "gave up after 2 attempts" in caught.value.message
    assert "lms server start" in (caught.value.hint or "")
    assert "Developer tab" in (caught.value.hint or "")


async def test_auth_required_without_a_token(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(token="s3cret-token")
    async with client(lm) as llm:
        with pytest.raises(AuthenticationError) as caught:
            await llm.list_models()
    assert caught.value.status_code == 401
    assert "$LM_API_TOKEN" in (caught.value.hint or "")
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    assert len(lm.requests) == 1  # a 4xx is not retried


async def test_a_wrong_token_is_rejected_and_never_shown(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(token="right-token")
    async with client(lm, token="wrong-token-123", token_env="MY_TOKEN") as llm:
        with pytest.raises(AuthenticationError) as caught:
            await llm.chat(ask())
    shown = f"{caught.value} {caught.value.hint} {caught.value!r} {caught.value.args}"
    assert "wrong-token-123" not in shown
    assert "$MY_TOKEN was rejected" in (caught.value.hint or "")


async def test_the_right_token_is_sent(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(token="right-token")
    config = ServerConfig(lm.url, token="right-token")
    async with LMStudioClient.from_config(config, retry=FAST) as llm:
        catalog = await llm.list_models()
        await llm.chat(ask())
    assert len(catalog.models) == 5
    assert {r.headers["Authorization"] for r in lm.requests} == {"Bearer right-token"}


async def test_the_token_never_reaches_a_connection_error_message() -> None:
    async with client(down_url(), token="tok-abc-123") as llm:
        with pytest.raises(LLMConnectionError) as caught:
            await llm.chat(ask())
    assert "tok-abc-123" not in f"{caught.value} {caught.value.hint} {caught.value!r}"


async def test_not_json_is_a_response_error(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(script=[lambda _request: {"content": None, "tool_calls": "oops"}])
    async with client(lm) as llm:
        with pytest.raises(LLMResponseError, match="not a chat completion"):
            await llm.chat(ask())
    assert json.dumps(lm.chat_requests[0]["messages"]) == '[{"role": "user", "content": "hello"}]'


async def test_a_server_without_any_model_list(make_fake_lmstudio) -> None:
    lm = make_fake_lmstudio(api="openai")
    async with client(lm.url + "/not-an-api") as llm:  # every path below it is 404
        with pytest.raises(LLMResponseError, match="answered none of /api/v1/models"):
            await llm.list_models()
    assert len(lm.requests) == 3


def test_clients_share_one_tls_context_per_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the CA bundle per client cost every run (and every batch row) ~15 ms."""
    from runner.lmstudio import LMStudioClient as Client

    def context_of(client: Client) -> object:
        return client._http._transport._pool._ssl_context  # type: ignore[attr-defined]

    remote = [Client("https://lm.example:1234"), Client("https://lm.example:1234")]
    local = [Client("http://127.0.0.1:1234"), Client("http://localhost:1234")]
    assert context_of(remote[0]) is context_of(remote[1])
    assert context_of(local[0]) is context_of(local[1])
    # SSL_CERT_FILE is still honoured where the environment is trusted.
    bundle = tmp_path / "ca.pem"
    import certifi

    bundle.write_text(Path(certifi.where()).read_text())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert context_of(Client("https://lm.example:1234")) is not context_of(remote[0])
    assert context_of(Client("http://127.0.0.1:1234")) is context_of(local[0])
