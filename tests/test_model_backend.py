"""The model backend on servers that are not LM Studio, or not fully: structured output in
the form a server takes, model names sent as the server's ids, fallback to the next model,
streaming with timing. Always over real sockets, against the fake in tests/fakes."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import DEFAULT_MODELS, FAKE_STATS, FakeLMStudio

from runner.agent import AgentLimits, AgentTask, run_agent
from runner.catalog import CatalogCache
from runner.chat import ChatRequest, Usage
from runner.errors import LLMResponseError, LLMTruncatedReplyError, ModelNotFoundError
from runner.lmstudio import LMStudioClient, RetryPolicy
from runner.lmstudio_answers import models_native_v1
from runner.lmstudio_server import ServerConfig
from runner.preflight import check_models, ensure_models, model_routes, verify_models
from runner.runlog import snapshot_view
from runner.spec import load_workflow
from runner.spec.model import Workflow

CODER = "qwen/qwen3-coder-30b"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
}
HELLO = ({"role": "user", "content": "hi"},)
FAST = RetryPolicy(base_delay=0.001, max_delay=0.002)
Make = Callable[..., FakeLMStudio]
pytestmark = pytest.mark.anyio
CATALOG = models_native_v1({"models": [m.native_v1() for m in DEFAULT_MODELS]}) or ()


def client(lm: FakeLMStudio, **options: Any) -> LMStudioClient:
    return LMStudioClient(lm.url, retry=FAST, **options)


async def structured(llm: LMStudioClient, model: str = CODER) -> tuple[Any, list[dict[str, Any]]]:
    """Run a one-step structured task; the output and the events it emitted."""
    events: list[dict[str, Any]] = []
    result = await run_agent(
        llm,
        AgentTask(model=model, prompt="What is six times seven?", output_schema=SCHEMA),
        None,
        AgentLimits(max_rounds=2),
        lambda kind, fields: events.append({"type": kind, **fields}),
    )
    return result.output, events


# --- structured output ---------------------------------------------------------------------


async def test_a_server_refusing_json_schema_gets_json_object_with_the_schema(
    make_fake_lmstudio: Make,
) -> None:
    """llama-cpp-python's 500 "Input should be 'text' or 'json_object'" is learned at once:
    no retries of the refused form, and the repair request does not send it again."""
    lm = make_fake_lmstudio(
        response_formats=("text", "json_object"), script=["not json", '{"answer": 42}']
    )
    async with client(lm) as llm:
        output, events = await structured(llm)
    assert output == {"answer": 42}
    formats = [body.get("response_format") for body in lm.chat_requests]
    assert [f["type"] for f in formats] == ["json_schema", "json_object", "json_object"]
    assert formats[1] == {"type": "json_object", "schema": SCHEMA}
    # The schema is in the prompt as well: json_object alone says nothing of the shape.
    assert json.dumps(SCHEMA) in lm.chat_requests[1]["messages"][-1]["content"]
    served = [e["served"] for e in events if e["type"] == "llm_response"]
    assert [s["response_format"] for s in served] == ["json_object_schema"] * 2


async def test_a_server_without_response_format_gets_the_schema_in_the_prompt(
    make_fake_lmstudio: Make,
) -> None:
    lm = make_fake_lmstudio(response_formats=("text",), script=['{"answer": 42}'])
    async with client(lm) as llm:
        output, _ = await structured(llm)
    assert output == {"answer": 42}
    sent = [body.get("response_format", {}).get("type") for body in lm.chat_requests]
    assert sent == ["json_schema", "json_object", "json_object", None]
    assert "response_format" not in lm.chat_requests[-1]
    assert json.dumps(SCHEMA) in lm.chat_requests[-1]["messages"][-1]["content"]


async def test_what_a_server_accepts_is_remembered_with_the_catalog(
    make_fake_lmstudio: Make,
) -> None:
    """A second process asks in the learned form straight away."""
    lm = make_fake_lmstudio(response_formats=("text", "json_object"))
    lm.script = ['{"answer": 1}', '{"answer": 2}']
    async with client(lm) as llm:
        await structured(llm)
    with CatalogCache() as cache:
        assert cache.structured_modes(lm.url) == {CODER: "json_object_schema"}
    async with client(lm) as fresh:
        output, _ = await structured(fresh)
    assert output == {"answer": 2}
    assert [b["response_format"]["type"] for b in lm.chat_requests] == [
        "json_schema",
        "json_object",
        "json_object",
    ]


async def test_an_unrelated_server_error_is_not_taken_for_a_refusal(
    make_fake_lmstudio: Make,
) -> None:
    lm = make_fake_lmstudio(chat_error=(500, {"error": {"message": "out of memory"}}))
    async with client(lm) as llm:
        with pytest.raises(LLMResponseError, match="out of memory"):
            await structured(llm)
    assert {b["response_format"]["type"] for b in lm.chat_requests} == {"json_schema"}
    assert len(lm.chat_requests) == FAST.attempts  # a 5xx is retried as before


# --- model names and fallback --------------------------------------------------------------


async def test_a_route_sends_the_servers_id_and_says_which_model_answered(
    make_fake_lmstudio: Make,
) -> None:
    lm = make_fake_lmstudio()
    async with client(lm) as llm:
        llm.routes["qwen3-coder-30b"] = (CODER,)
        answer = await llm.chat(ChatRequest("qwen3-coder-30b", HELLO))
    assert lm.chat_requests[0]["model"] == CODER
    assert answer.served["model"] == CODER


async def test_a_failing_model_hands_over_to_the_next(make_fake_lmstudio: Make) -> None:
    broken = "mistralai/magistral-small-2509"
    lm = make_fake_lmstudio(broken_models={broken: 503})
    async with client(lm) as llm:
        llm.routes["writer"] = (broken, CODER)
        answer = await llm.chat(ChatRequest("writer", HELLO))
    assert answer.content == "echo: hi"
    assert [b["model"] for b in lm.chat_requests] == [broken] * FAST.attempts + [CODER]
    assert answer.served["model"] == CODER
    (failed,) = answer.served["fallback_from"]
    assert failed["model"] == broken and "503" in failed["error"]


async def test_a_request_error_does_not_fall_back(make_fake_lmstudio: Make) -> None:
    lm = make_fake_lmstudio(chat_error=(400, {"error": {"message": "bad max_tokens"}}))
    async with client(lm) as llm:
        llm.routes["writer"] = (CODER, "google/gemma-3-270m")
        with pytest.raises(LLMResponseError, match="bad max_tokens"):
            await llm.chat(ChatRequest("writer", HELLO))
    assert len(lm.chat_requests) == 1


# --- streaming -----------------------------------------------------------------------------


async def test_a_streamed_answer_records_its_timing(make_fake_lmstudio: Make) -> None:
    lm = make_fake_lmstudio(script=["a streamed answer of several pieces"])
    async with client(lm, stream=True) as llm:
        answer = await llm.chat(ChatRequest(CODER, HELLO))
    assert answer.served["streamed"] is True
    assert answer.served["ttft_s"] >= 0
    assert answer.served["tokens_per_s"] > 0


async def test_a_stream_without_counts_counts_its_pieces(make_fake_lmstudio: Make) -> None:
    """llama-cpp-python streams one token per piece and no usage: the run still counts the
    completion tokens, and says they were counted."""
    lm = make_fake_lmstudio(stream_usage=False, script=["one two three four five six"])
    async with client(lm, stream=True) as llm:
        answer = await llm.chat(ChatRequest(CODER, HELLO))
    assert lm.chat_requests[0]["stream_options"] == {"include_usage": True}
    pieces = -(-len("one two three four five six") // 5)  # the fake's 5-character pieces
    assert answer.usage == Usage(0, pieces)
    assert answer.served["usage_counted"] is True


async def test_a_request_the_server_cannot_stream_is_asked_unstreamed(
    make_fake_lmstudio: Make,
) -> None:
    """llama-cpp-python answers a streamed request with tools by an empty stream: asked once
    more without streaming, and requests with tools are not streamed after that."""
    tools = ({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},)
    script = ["never sent", "first", "second", "plain"]  # the empty stream takes a turn
    lm = make_fake_lmstudio(unstreamable_tools=True, script=script)
    async with client(lm, stream=True) as llm:
        first = await llm.chat(ChatRequest(CODER, HELLO, tools=tools))
        second = await llm.chat(ChatRequest(CODER, HELLO, tools=tools))
        plain = await llm.chat(ChatRequest(CODER, HELLO))
    assert (first.content, second.content, plain.content) == ("first", "second", "plain")
    assert [b["stream"] for b in lm.chat_requests] == [True, False, False, True]
    assert "stream_options" not in lm.chat_requests[1]


async def test_lm_studio_stats_are_taken_as_reported(make_fake_lmstudio: Make) -> None:
    lm = make_fake_lmstudio(stats=True)
    async with client(lm, stream=True) as llm:
        answer = await llm.chat(ChatRequest(CODER, HELLO))
    assert answer.served["ttft_s"] == FAKE_STATS["time_to_first_token"]
    assert answer.served["tokens_per_s"] == FAKE_STATS["tokens_per_second"]
    assert answer.served["load_s"] == FAKE_STATS["model_load_time_seconds"]


async def test_a_stream_without_a_finish_is_an_error_with_a_hint(make_fake_lmstudio: Make) -> None:
    lm = make_fake_lmstudio(end_stream_early=True)
    async with client(lm, stream=True) as llm:
        with pytest.raises(LLMTruncatedReplyError, match="without a finish reason") as caught:
            await llm.chat(ChatRequest(CODER, HELLO))
    assert caught.value.hint


# --- end to end: `lmflow run` --------------------------------------------------------------


def write_flow(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(textwrap.dedent(body))
    return path


RunLogged = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def run_logged(
    lmflow_cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RunLogged:
    """`lmflow run FLOW` against a fake, in the test's directory; it must succeed. Its events."""
    monkeypatch.chdir(tmp_path)

    def run(flow: Path, lm: FakeLMStudio, *options: str) -> list[dict[str, Any]]:
        log = tmp_path / "events.jsonl"
        done = lmflow_cli("run", str(flow), "--base-url", lm.url, "--log", str(log), *options)
        assert done.exit_code == 0, done.stderr
        return [json.loads(line) for line in log.read_text().splitlines()]

    return run


def test_a_run_streams_sends_the_servers_id_and_logs_it(
    make_fake_lmstudio: Make, run_logged: RunLogged, tmp_path: Path
) -> None:
    lm = make_fake_lmstudio(response_formats=("text", "json_object"), script=['{"answer": 42}'])
    flow = write_flow(
        tmp_path,
        f"""\
        version: 1
        name: short
        steps:
          - id: ask
            model: qwen3-coder-30b
            prompt: What is six times seven?
            output_schema: {json.dumps(SCHEMA)}
        """,
    )
    events = run_logged(flow, lm)
    assert {b["model"] for b in lm.chat_requests} == {CODER}
    assert all(b["stream"] for b in lm.chat_requests)
    (response,) = [e for e in events if e["type"] == "llm_response"]
    assert response["served"]["model"] == CODER
    assert response["served"]["response_format"] == "json_object_schema"
    assert "ttft_s" in response["served"]


# --- fallback lists: the spec, the model check, the run ------------------------------------

GEMMA = "google/gemma-3-270m"
MAGISTRAL = "mistralai/magistral-small-2509"


def load(tmp_path: Path, body: str) -> Workflow:
    return load_workflow(write_flow(tmp_path, body))


def steps_on(*models: str) -> str:
    """A workflow of one `prompt: hi` step per model value; step i's `model:` is on line
    4 + 3i."""
    steps = "".join(f"  - id: s{i}\n    model: {m}\n    prompt: hi\n" for i, m in enumerate(models))
    return "version: 1\nsteps:\n" + steps


def test_a_model_may_be_a_list_in_steps_aliases_and_defaults(tmp_path: Path) -> None:
    flow = load(
        tmp_path,
        """\
        version: 1
        models:
          writer: [qwen3-coder-30b, gemma-3-270m]
        defaults:
          model: [writer, mistralai/magistral-small-2509]
        steps:
          - id: a
            prompt: hi
          - id: b
            model: [x/missing, writer]
            prompt: hi
        """,
    )
    a, b = flow.steps
    assert flow.model_candidates(flow.model_reference(a)[0]) == (
        "qwen3-coder-30b",
        "gemma-3-270m",
        MAGISTRAL,
    )
    assert flow.step_model(a) == "qwen3-coder-30b"  # the name its requests carry
    assert flow.step_model(b) == "x/missing"


def test_a_bad_model_list_is_reported_where_it_is(
    tmp_path: Path, lmflow_cli: Callable[..., Any]
) -> None:
    path = write_flow(tmp_path, steps_on(f"[{CODER}, 5]", "[]"))
    done = lmflow_cli("validate", "--offline", str(path))
    assert done.exit_code == 2
    assert f"{path}:4:35: error: step 's0' key 'model.1' must be a string" in done.stdout
    assert f"{path}:7:12: error: step 's1' key 'model' must not be empty" in done.stdout
    assert "step 's0' talks to a model but none is set" not in done.stdout


def test_the_check_picks_the_first_model_the_server_has(tmp_path: Path) -> None:
    flow = load(tmp_path, steps_on(f"[x/missing, qwen3-coder-30b, {GEMMA}]"))
    problems = check_models(flow, CATALOG)
    assert [(p.rule, p.severity, p.line) for p in problems] == [("model-fallback", "warning", 4)]
    assert model_routes(flow, CATALOG) == {"x/missing": (CODER, GEMMA)}


def test_a_list_none_of_whose_models_exists_is_an_error(tmp_path: Path) -> None:
    flow = load(tmp_path, steps_on("[x/missing, y/missing]"))
    with pytest.raises(ModelNotFoundError, match=r"flow.yaml:4:\d+: none of 'x/missing', 'y/m"):
        ensure_models(flow, CATALOG)


def test_steps_on_several_unloaded_models_are_told_to_load_them(tmp_path: Path) -> None:
    flow = load(tmp_path, steps_on(MAGISTRAL, GEMMA))
    (residency,) = [p for p in check_models(flow, CATALOG) if p.rule == "model-residency"]
    assert residency.severity == "warning" and residency.line == 7
    assert "--load" in (residency.hint or "")
    loaded = [replace(m, state="loaded") for m in CATALOG]
    assert not [p for p in check_models(flow, loaded) if p.rule == "model-residency"]


def test_a_run_falls_back_to_the_next_model_and_logs_which_answered(
    make_fake_lmstudio: Make, run_logged: RunLogged, tmp_path: Path
) -> None:
    lm = make_fake_lmstudio(broken_models={MAGISTRAL: 503}, script=["fine"])
    flow = write_flow(tmp_path, steps_on(f"[{MAGISTRAL}, qwen3-coder-30b]"))
    events = run_logged(flow, lm)
    assert lm.chat_requests[-1]["model"] == CODER
    (response,) = [e for e in events if e["type"] == "llm_response"]
    assert response["served"]["model"] == CODER
    assert response["served"]["fallback_from"][0]["model"] == MAGISTRAL


def test_load_loads_the_models_the_steps_use_first(
    make_fake_lmstudio: Make, tmp_path: Path
) -> None:
    lm = make_fake_lmstudio()
    flow = load(tmp_path, steps_on(f"[{MAGISTRAL}, {GEMMA}]", GEMMA))
    warnings = asyncio.run(verify_models(flow, ServerConfig(lm.url), load=True))
    assert [r.body["model"] for r in lm.requests if r.path == "/api/v1/models/load"] == [
        GEMMA,
        MAGISTRAL,
    ]
    assert not [w for w in warnings if w.rule == "model-residency"]


def test_a_run_with_load_logs_each_models_load_time(
    make_fake_lmstudio: Make, run_logged: RunLogged, tmp_path: Path
) -> None:
    lm = make_fake_lmstudio()
    events = run_logged(write_flow(tmp_path, steps_on(MAGISTRAL)), lm, "--load")
    (loaded,) = [e for e in events if e["type"] == "notice" and e["rule"] == "model-loaded"]
    assert loaded["message"] == f"model {MAGISTRAL!r} loaded in 0.01 s (--load)"


def test_what_served_an_answer_stays_out_of_snapshots() -> None:
    """Which model answered and how fast differ between machines and are not in a replay."""
    event = {"type": "llm_response", "round": 1, "content": "hi", "served": {"ttft_s": 0.2}}
    assert snapshot_view([event]) == [{"type": "llm_response", "round": 1, "content": "hi"}]
