"""What lmflow does as an MCP client beyond listing and calling tools (runner/mcp_handlers.py),
against real server processes: our fixture server with `--client-features`, over stdio and
streamable HTTP.

Who lmflow says it is, what it declares, progress (events and a timeout that progress
extends), log messages, roots, elicitation, a changing tool list, tools only callable as
tasks, and the SDK's -32000 errors that are not a dead server.
"""

from __future__ import annotations

import json
import runpy
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError
from mcp.types import CONNECTION_CLOSED, CallToolResult, ImageContent
from mcp_support import FIXTURE_SERVER, fixture_server, http_fixture, new_tag

import runner
from runner.chat import ChatRequest, ChatResponse, Usage
from runner.errors import MCPServerError
from runner.mcp import McpSessions, _reason
from runner.mcp_content import tool_result
from runner.mcp_handlers import form_answer
from runner.runlog import Scope, current_scope
from runner.runtime import sampling_model
from runner.spec import load_workflow
from runner.spec.model import HttpServer, Sampling, ToolFilter, Workflow

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Events:
    """A stand-in for `RunLog.emit` that keeps what it is given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(
        self, type: str, step: str | None = None, *, item: int | None = None, **data: Any
    ) -> None:
        self.seen.append({"type": type, "step": step, "item": item, **data})

    def of(self, type: str) -> list[dict[str, Any]]:
        return [event for event in self.seen if event["type"] == type]


def features(name: str = "fx", **settings: Any) -> Any:
    server = fixture_server(name, "--client-features", tag=new_tag())
    return replace(server, **settings)


# --- defects: -32000 that is not a dead server, results over 1 MiB over HTTP ---------------


async def test_a_result_over_one_mib_comes_through_over_http() -> None:
    with http_fixture() as (url, _):
        async with McpSessions({"web": HttpServer("web", url)}) as sessions:
            big = await sessions.call_tool("web", "blob", {"characters": 1_500_000})
    assert not big.is_error
    assert len(big.text) == 1_500_000


async def test_an_event_over_the_limit_is_a_tool_error_that_says_so() -> None:
    with http_fixture() as (url, _):
        server = HttpServer("web", url, max_message_bytes=100_000)
        async with McpSessions({"web": server}) as sessions:
            big = await sessions.call_tool("web", "blob", {"characters": 200_000})
            after = await sessions.call_tool("web", "echo", {"text": "still here"})
    assert big.is_error
    assert "exceeded the 100000 byte limit" in big.text
    assert "did it exit" not in big.text
    assert after.text == "still here"


def test_a_request_failure_keeps_the_sdk_message_and_only_a_closed_connection_is_an_exit() -> None:
    failed = _reason(MCPError(CONNECTION_CLOSED, "SSE stream failed: boom"))
    assert "SSE stream failed: boom" in failed and "did it exit" not in failed
    assert "did it exit" in _reason(MCPError(CONNECTION_CLOSED, "Connection closed"))


# --- what lmflow says about itself at initialize ------------------------------------------


async def test_lmflow_names_itself_and_declares_elicitation_and_roots(tmp_path: Path) -> None:
    async with McpSessions({"fx": features()}, log_dir=tmp_path) as sessions:
        told = json.loads((await sessions.call_tool("fx", "client", {})).text)
    assert told["info"]["name"] == "lmflow"
    assert told["info"]["version"] == runner.__version__
    assert set(told["capabilities"]) >= {"elicitation", "roots"}
    assert "sampling" not in told["capabilities"]  # lmflow does not answer sampling (yet)


async def test_tools_only_callable_as_tasks_are_not_offered(tmp_path: Path) -> None:
    async with McpSessions({"fx": features()}, log_dir=tmp_path) as sessions:
        names = {tool.name for tool in sessions.tools("fx")}
        toolbox = sessions.toolbox(["fx"])
    assert "background" not in names
    assert "background" not in {spec.name for spec in toolbox.specs()}
    assert {"echo", "progress", "client"} <= names


# --- binary content -----------------------------------------------------------------------


async def test_images_audio_and_binary_resources_are_saved_in_the_run_dir(tmp_path: Path) -> None:
    async with McpSessions({"fx": features()}, log_dir=tmp_path) as sessions:
        picture = await sessions.call_tool("fx", "picture", {})
        attached = await sessions.call_tool("fx", "attachments", {})
    pixel = runpy.run_path(str(FIXTURE_SERVER))["PIXEL"]
    saved = tmp_path / "mcp-content"
    (png,) = saved.glob("*.png")
    assert png.read_bytes() == pixel
    assert picture.text == f"a picture follows\n[image content: image/png, saved to {png}]"
    (wav,) = saved.glob("*.wav")
    (pdf,) = saved.glob("*.pdf")
    assert wav.read_bytes() == b"RIFF-not-really" and pdf.read_bytes() == b"%PDF-1.4 tiny"
    assert attached.text.splitlines() == [
        f"[audio content: audio/wav, saved to {wav}]",
        f"[binary resource: file:///report.pdf: application/pdf, saved to {pdf}]",
    ]


# --- annotations --------------------------------------------------------------------------


async def test_annotations_are_kept_and_read_only_keeps_the_read_only_tools(
    tmp_path: Path,
) -> None:
    async with McpSessions({"fx": features()}, log_dir=tmp_path) as sessions:
        tools = {tool.name: tool for tool in sessions.tools("fx")}
        read_only = sessions.toolbox(["fx"], ToolFilter(read_only=True))
        every = sessions.toolbox(["fx"], ToolFilter(read_only=False))
        answer = await read_only.call("lookup", {"key": "k"})
    store = tools["store"].annotations
    assert store is not None and store.destructive_hint is True and not store.read_only_hint
    assert [spec.name for spec in read_only.specs()] == ["lookup"]
    assert answer.text == "value of k"
    assert {spec.name for spec in every.specs()} == set(tools)


async def test_read_only_with_no_read_only_tool_stops_before_the_first_step(
    tmp_path: Path,
) -> None:
    server = fixture_server("plain", tag=new_tag())  # no tool of it is annotated
    async with McpSessions({"plain": server}, log_dir=tmp_path) as sessions:
        with pytest.raises(MCPServerError) as raised:
            sessions.toolbox(["plain"], ToolFilter(read_only=True))
    assert "no MCP server of the step (plain) marks any tool read-only" in raised.value.message


# --- progress -----------------------------------------------------------------------------


async def test_progress_is_an_event_of_the_calling_step_and_extends_the_timeout(
    tmp_path: Path,
) -> None:
    """Eight notifications 0.4 s apart: 3.2 s in all, past the 2 s timeout, but never 2 s
    without progress."""
    events = Events()
    server = features(timeout=2.0)
    async with McpSessions({"fx": server}, log_dir=tmp_path, emit=events) as sessions:
        current_scope.set(Scope("survey", 2))
        done = await sessions.call_tool("fx", "progress", {"steps": 8, "delay": 0.4})
    assert not done.is_error, done.text
    assert done.text == "done after 8 steps"
    progress = events.of("mcp_progress")
    assert [(e["step"], e["item"], e["server"], e["tool"]) for e in progress] == [
        ("survey", 2, "fx", "progress")
    ] * 8
    assert [(e["progress"], e["total"]) for e in progress] == [(float(i), 8.0) for i in range(1, 9)]
    assert progress[0]["message"] == "step 1 of 8"


async def test_without_progress_extension_the_timeout_holds(tmp_path: Path) -> None:
    server = features(timeout=2.0, progress_extends_timeout=False)
    async with McpSessions({"fx": server}, log_dir=tmp_path) as sessions:
        late = await sessions.call_tool("fx", "progress", {"steps": 8, "delay": 0.4})
        after = await sessions.call_tool("fx", "echo", {"text": "usable"})
    assert late.is_error and "did not answer within 2s" in late.text
    assert after.text == "usable"


# --- logging ------------------------------------------------------------------------------


async def test_log_messages_reach_the_run_log_and_the_stderr_log_masked(tmp_path: Path) -> None:
    events = Events()
    secret = "s3cr3t-log-value"

    def redact(text: str) -> str:
        return text.replace(secret, "***")

    server = features()
    async with McpSessions(
        {"fx": server}, log_dir=tmp_path, emit=events, redact=redact
    ) as sessions:
        await sessions.call_tool("fx", "log", {"level": "warning", "message": f"key {secret}"})
    (logged,) = events.of("mcp_log")
    assert (logged["server"], logged["level"], logged["logger"]) == ("fx", "warning", "fixture")
    assert logged["data"] == f"key {secret}"  # the run log masks events itself (RunLog)
    stderr = (tmp_path / "mcp-fx.stderr.log").read_text()
    assert "[mcp warning fixture] key ***" in stderr
    assert secret not in stderr
    assert "fixture server fx starting" in stderr  # the server's own stderr is kept too


# --- roots, elicitation, list_changed -----------------------------------------------------


@pytest.mark.parametrize(
    ("roots", "expected"),
    [
        pytest.param((), [], id="default-none"),
        pytest.param((".",), ["."], id="the-workflow-dir"),
        pytest.param(("data", "/srv/shared"), ["data", "/srv/shared"], id="relative-and-absolute"),
    ],
)
async def test_servers_get_their_roots(
    roots: tuple[str, ...], expected: list[str], tmp_path: Path
) -> None:
    server = features(roots=roots)
    async with McpSessions({"fx": server}, log_dir=tmp_path, workflow_dir=tmp_path) as sessions:
        listed = await sessions.call_tool("fx", "roots", {})
    assert listed.text.splitlines() == [(tmp_path / path).resolve().as_uri() for path in expected]


@pytest.mark.parametrize(
    ("policy", "answers", "expected"),
    [
        pytest.param("decline", {}, {"action": "decline", "data": None}, id="decline"),
        pytest.param(
            "accept_defaults",
            {},
            {"action": "accept", "data": {"name": "Ada", "count": 3}},
            id="accept-defaults",
        ),
        pytest.param(
            "answers",
            {"count": 7},
            {"action": "accept", "data": {"name": "Ada", "count": 7}},
            id="answers-then-defaults",
        ),
    ],
)
async def test_elicitation_is_answered_by_policy_so_the_call_never_waits(
    policy: str, answers: dict[str, Any], expected: dict[str, Any], tmp_path: Path
) -> None:
    events = Events()
    server = features(elicitation=policy, elicitation_answers=answers)
    async with McpSessions({"fx": server}, log_dir=tmp_path, emit=events) as sessions:
        asked = await sessions.call_tool("fx", "ask", {})
    assert json.loads(asked.text) == expected
    (event,) = events.of("mcp_elicitation")
    assert (event["server"], event["action"]) == ("fx", expected["action"])
    assert event["message"] == "Who and how many?"


def test_a_required_field_without_answer_or_default_declines() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "size": {"type": "integer", "default": 2}},
        "required": ["name", "size"],
    }
    assert form_answer(schema, {}) == (None, "no answer and no default for name")
    assert form_answer(schema, {"name": "Bo"}) == ({"name": "Bo", "size": 2}, None)


def workflow_from(tmp_path: Path, text: str) -> Workflow:
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    return load_workflow(path)


def test_the_workflow_file_sets_roots_and_the_elicitation_policy(tmp_path: Path) -> None:
    workflow = workflow_from(
        tmp_path,
        """
        version: 1
        name: settings
        mcp_servers:
          asks: {command: srv, roots: [data], elicitation: {answers: {count: 7}}}
          web: {url: "http://127.0.0.1:1/mcp", elicitation: accept_defaults}
        steps:
          - {id: a, tool: asks.ask}
          - {id: b, tool: web.ask}
        """,
    )
    servers = workflow.mcp_servers
    assert servers["asks"].roots == ("data",)
    assert servers["asks"].elicitation == "answers"
    assert dict(servers["asks"].elicitation_answers) == {"count": 7}
    assert servers["web"].roots == ()
    assert servers["web"].elicitation == "accept_defaults"


async def test_a_changed_tool_list_is_listed_again(tmp_path: Path) -> None:
    async with McpSessions({"fx": features()}, log_dir=tmp_path) as sessions:
        assert "grown" not in {tool.name for tool in sessions.tools("fx")}
        await sessions.call_tool("fx", "grow", {})
        with anyio.fail_after(10):  # a bound on the notification's delivery, not a timing
            while "grown" not in {tool.name for tool in sessions.tools("fx")}:
                await anyio.sleep(0.05)
        grown = await sessions.toolbox(["fx"]).call("grown", {})
    assert grown.text == "grown"


def test_content_that_is_not_base64_is_named_not_saved(tmp_path: Path) -> None:
    result = CallToolResult(
        content=[ImageContent(type="image", data="not base64!", mime_type="image/png")]
    )
    converted = tool_result(result, tmp_path / "mcp-content")
    assert converted.text == "[image content: image/png, not valid base64: not saved]"
    assert not (tmp_path / "mcp-content").exists()


# --- sampling -----------------------------------------------------------------------------


class ScriptedModel:
    """A `ChatModel` that answers from a list and keeps the requests (the end-to-end test in
    test_mcp_client_cli.py goes through the fake LM Studio server)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(self.answers.pop(0), usage=Usage(30, 10))


async def test_a_server_that_may_sample_is_answered_by_the_calling_steps_model(
    tmp_path: Path,
) -> None:
    events = Events()
    model = ScriptedModel("short")
    server = features(sampling=Sampling(max_requests=2))
    async with McpSessions(
        {"fx": server},
        log_dir=tmp_path,
        emit=events,
        chat=model,
        model_for=lambda named, step: named or f"model-of-{step}",
    ) as sessions:
        told = json.loads((await sessions.call_tool("fx", "client", {})).text)
        current_scope.set(Scope("digest"))
        summary = await sessions.call_tool("fx", "summarize", {"text": "a long text"})
    assert "sampling" in told["capabilities"]
    assert summary.text == "model-of-digest: short"
    (request,) = model.requests
    assert request.model == "model-of-digest"
    assert request.messages == (
        {"role": "system", "content": "Summarize in one line."},
        {"role": "user", "content": "a long text"},
    )
    assert request.max_tokens == 64
    (event,) = events.of("mcp_sampling")
    assert (event["step"], event["server"], event["content"]) == ("digest", "fx", "short")
    assert event["usage"] == {"prompt_tokens": 30, "completion_tokens": 10}


@pytest.mark.parametrize(
    ("limits", "refusal"),
    [
        pytest.param(
            Sampling("m", max_requests=1), "1 requests (sampling.max_requests)", id="requests"
        ),
        pytest.param(Sampling("m", max_tokens=40), "40 tokens (sampling.max_tokens)", id="tokens"),
    ],
)
async def test_sampling_past_its_limits_is_refused_not_waited_on(
    limits: Sampling, refusal: str, tmp_path: Path
) -> None:
    model = ScriptedModel("first", "second")
    async with McpSessions(
        {"fx": features(sampling=limits)},
        log_dir=tmp_path,
        chat=model,
        model_for=lambda named, step: named,
    ) as sessions:
        first = await sessions.call_tool("fx", "summarize", {"text": "one"})
        second = await sessions.call_tool("fx", "summarize", {"text": "two"})
    assert first.text == "m: first"
    assert second.is_error and f"sampling limit reached: {refusal}" in second.text
    assert len(model.requests) == 1


def test_the_sampling_model_is_the_entrys_then_the_steps_then_the_default(tmp_path: Path) -> None:
    workflow = workflow_from(
        tmp_path,
        """
        version: 1
        name: sampling
        models: {fast: org/fast-model}
        defaults: {model: org/default-model}
        mcp_servers:
          named: {command: srv, sampling: {model: fast, max_requests: 3}}
          free: {command: srv, sampling: true}
        steps:
          - {id: direct, tool: free.summarize}
          - {id: think, model: org/step-model, mcp: [named, free], prompt: go}
        """,
    )
    named = workflow.mcp_servers["named"].sampling
    assert named == Sampling("fast", max_requests=3)
    assert workflow.mcp_servers["free"].sampling == Sampling()
    assert sampling_model(workflow, "fast", "think") == "org/fast-model"
    assert sampling_model(workflow, None, "think") == "org/step-model"
    assert sampling_model(workflow, None, "direct") == "org/default-model"
    assert "org/fast-model" in workflow.models_in_use()  # checked before the run starts


# --- resources ----------------------------------------------------------------------------


async def test_a_server_with_resources_gets_a_read_resource_tool(tmp_path: Path) -> None:
    async with McpSessions({"fx": features()}, log_dir=tmp_path) as sessions:
        reader = {tool.name: tool for tool in sessions.tools("fx")}["read_resource"]
        toolbox = sessions.toolbox(["fx"], ["read_resource"])
        text = await toolbox.call("read_resource", {"uri": "note://greeting"})
        binary = await sessions.call_tool("fx", "read_resource", {"uri": "blob://pixel"})
        unknown = await sessions.call_tool("fx", "read_resource", {"uri": "note://nothing"})
        no_uri = await sessions.call_tool("fx", "read_resource", {})
    assert reader.input_schema["required"] == ["uri"]
    assert text.text == "hello from a resource" and not text.is_error
    (png,) = (tmp_path / "mcp-content").glob("*.png")
    assert binary.text == f"[binary resource: blob://pixel: image/png, saved to {png}]"
    assert png.read_bytes() == runpy.run_path(str(FIXTURE_SERVER))["PIXEL"]
    assert unknown.is_error and "note://nothing" in unknown.text
    assert no_uri.is_error and "needs a `uri`" in no_uri.text


async def test_a_server_without_resources_gets_no_read_resource_tool(tmp_path: Path) -> None:
    plain = fixture_server("plain", tag=new_tag())
    async with McpSessions({"plain": plain}, log_dir=tmp_path) as sessions:
        names = {tool.name for tool in sessions.tools("plain")}
    assert "read_resource" not in names
