"""The agent engine against scripted fakes of our own interfaces (ChatModel, Toolbox)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest

from runner.agent import AgentLimits, AgentResult, AgentTally, AgentTask, run_agent
from runner.chat import ChatRequest, ChatResponse, ToolCall, ToolResult, ToolSpec, Usage
from runner.errors import ConfigurationError, MCPServerError, StepFailedError

Tool = Callable[[Mapping[str, Any]], Awaitable[ToolResult]]
SCHEMA = {
    "type": "object",
    "properties": {"modules": {"type": "array", "items": {"type": "string"}}},
    "required": ["modules"],
}


class ScriptedModel:
    """Answers with the queued responses, in order, and keeps every request it received."""

    def __init__(self, *responses: ChatResponse) -> None:
        self.responses = list(responses)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        assert self.responses, "the engine asked the model more often than the script allows"
        return self.responses.pop(0)


class HangingModel:
    """A model that never answers."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class FakeToolbox:
    """Tools given as coroutine functions; records each call it receives."""

    def __init__(self, **tools: Tool) -> None:
        self.tools = tools
        self.received: list[tuple[str, dict[str, Any]]] = []

    def specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(name, f"the {name} tool", {"type": "object", "properties": {}})
            for name in self.tools
        ]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        self.received.append((name, dict(arguments)))
        return await self.tools[name](arguments)


async def echo(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult(json.dumps(dict(arguments), sort_keys=True))


async def broken(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult("file not found: nope.txt", is_error=True)


async def dead_server(arguments: Mapping[str, Any]) -> ToolResult:
    raise MCPServerError("server 'fs' exited with code 1")


def answer(text: str | None, **fields: Any) -> ChatResponse:
    return ChatResponse(content=text, finish_reason="stop", **fields)


def calls(*specs: tuple[str, str]) -> ChatResponse:
    """A turn that calls tools: (name, raw arguments) pairs, ids call_1, call_2, ..."""
    return ChatResponse(
        content=None,
        tool_calls=tuple(
            ToolCall(f"call_{i}", name, arguments) for i, (name, arguments) in enumerate(specs, 1)
        ),
        finish_reason="tool_calls",
    )


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.append((kind, fields))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [fields for k, fields in self if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self]


def run(
    model: Any,
    toolbox: FakeToolbox | None = None,
    *,
    limits: AgentLimits | None = None,
    events: Events | None = None,
    tally: AgentTally | None = None,
    **task: Any,
) -> AgentResult:
    return asyncio.run(go(model, toolbox, limits=limits, events=events, tally=tally, **task))


async def go(
    model: Any,
    toolbox: FakeToolbox | None = None,
    *,
    limits: AgentLimits | None = None,
    events: Events | None = None,
    tally: AgentTally | None = None,
    **task: Any,
) -> AgentResult:
    task.setdefault("prompt", "Survey the repository.")
    return await run_agent(
        model,
        AgentTask(model="qwen/qwen3-4b", **task),
        toolbox,
        limits or AgentLimits(),
        events if events is not None else Events(),
        tally,
    )


def tool_messages(request: ChatRequest) -> list[dict[str, Any]]:
    return [dict(m) for m in request.messages if m["role"] == "tool"]


# --- the plain loop -----------------------------------------------------------------------


def test_plain_answer_returns_the_text_and_sends_the_task_parameters() -> None:
    model = ScriptedModel(answer("Three modules.", usage=Usage(12, 3)))
    result = run(model, system="Be brief.", temperature=0.2, max_tokens=256)

    assert (result.output, result.text, result.rounds, result.tool_calls) == (
        "Three modules.",
        "Three modules.",
        1,
        0,
    )
    assert result.usage == Usage(12, 3)
    [request] = model.requests
    assert request.model == "qwen/qwen3-4b"
    assert [dict(m) for m in request.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Survey the repository."},
    ]
    assert (request.tools, request.tool_choice, request.response_format) == ((), None, None)
    assert (request.temperature, request.max_tokens) == (0.2, 256)
    assert result.messages[-1] == {"role": "assistant", "content": "Three modules."}


def test_tool_result_is_fed_back_with_its_call_id_and_usage_adds_up() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(
        ChatResponse(
            None,
            (ToolCall("abc", "echo", '{"path": "src"}'),),
            "tool_calls",
            usage=Usage(10, 5),
        ),
        answer("done", usage=Usage(20, 2)),
    )
    result = run(model, toolbox)

    assert toolbox.received == [("echo", {"path": "src"})]
    second = model.requests[1]
    assert dict(second.messages[-2])["tool_calls"][0]["id"] == "abc"
    assert tool_messages(second) == [
        {"role": "tool", "tool_call_id": "abc", "content": '{"path": "src"}'}
    ]
    assert [t["function"]["name"] for t in second.tools] == ["echo"]
    assert (result.output, result.rounds, result.tool_calls) == ("done", 2, 1)
    assert result.usage == Usage(30, 7)


def test_calls_of_one_turn_run_concurrently_and_are_answered_in_call_order() -> None:
    first_started = asyncio.Event()
    second_done = asyncio.Event()
    finished: list[str] = []
    in_flight = 0
    most_in_flight = 0

    async def first(arguments: Mapping[str, Any]) -> ToolResult:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        first_started.set()
        await second_done.wait()  # only returns if the second call runs meanwhile
        in_flight -= 1
        finished.append("first")
        return ToolResult("first result")

    async def second(arguments: Mapping[str, Any]) -> ToolResult:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await first_started.wait()
        in_flight -= 1
        finished.append("second")
        second_done.set()
        return ToolResult("second result")

    model = ScriptedModel(calls(("first", "{}"), ("second", "{}")), answer("ok"))
    events = Events()
    # The timeout guards against a hang if the calls ran one after the other; no timing is asserted.
    result = run(
        model,
        FakeToolbox(first=first, second=second),
        limits=AgentLimits(timeout=10),
        events=events,
    )

    assert most_in_flight == 2
    assert finished == ["second", "first"]
    assert tool_messages(model.requests[1]) == [
        {"role": "tool", "tool_call_id": "call_1", "content": "first result"},
        {"role": "tool", "tool_call_id": "call_2", "content": "second result"},
    ]
    assert [(e["id"], e["name"]) for e in events.of("tool_call")] == [
        ("call_1", "first"),
        ("call_2", "second"),
    ]
    assert [(e["id"], e["content"]) for e in events.of("tool_result")] == [
        ("call_1", "first result"),
        ("call_2", "second result"),
    ]
    assert result.tool_calls == 2


# --- misbehaving models -------------------------------------------------------------------


def test_arguments_that_are_not_json_go_back_as_an_error_naming_the_raw_text() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(
        calls(("echo", "path=src")), calls(("echo", '{"path": "src"}')), answer("ok")
    )
    events = Events()
    result = run(model, toolbox, events=events)

    assert toolbox.received == [("echo", {"path": "src"})]
    [reply] = tool_messages(model.requests[1])
    assert reply["tool_call_id"] == "call_1"
    assert reply["content"].startswith("error: the arguments of echo are not valid JSON")
    assert "path=src" in reply["content"]
    [notice] = events.of("agent_notice")
    assert (notice["kind"], notice["round"]) == ("invalid_arguments", 1)
    assert events.of("tool_call")[0]["arguments"] == "path=src"
    assert events.of("tool_result")[0]["is_error"] is True
    assert result.output == "ok"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("[1, 2]", "an array"), ('"src"', "a string"), ("3", "a number"), ("null", "null")],
)
def test_arguments_that_are_not_an_object_go_back_as_an_error(raw: str, kind: str) -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(calls(("echo", raw)), answer("ok"))
    run(model, toolbox)

    assert toolbox.received == []
    [reply] = tool_messages(model.requests[1])
    assert f"must be a JSON object, not {kind}: {raw}" in reply["content"]


def test_empty_arguments_mean_no_arguments() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(calls(("echo", "")), answer("ok"))
    events = Events()
    run(model, toolbox, events=events)

    assert toolbox.received == [("echo", {})]
    assert events.of("agent_notice") == []


def test_unknown_tool_goes_back_as_an_error_listing_the_available_tools() -> None:
    toolbox = FakeToolbox(echo=echo, broken=broken)
    model = ScriptedModel(calls(("read_file", "{}")), answer("ok"))
    events = Events()
    run(model, toolbox, events=events)

    assert toolbox.received == []
    [reply] = tool_messages(model.requests[1])
    assert reply["content"] == (
        "error: there is no tool named 'read_file'. Available tools: echo, broken."
    )
    assert [n["kind"] for n in events.of("agent_notice")] == ["unknown_tool"]


def test_a_failing_tool_is_passed_back_as_an_error_and_the_run_goes_on() -> None:
    model = ScriptedModel(calls(("broken", '{"path": "nope.txt"}')), answer("It is missing."))
    events = Events()
    result = run(model, FakeToolbox(broken=broken), events=events)

    [reply] = tool_messages(model.requests[1])
    assert reply["content"] == "error: file not found: nope.txt"
    [event] = events.of("tool_result")
    assert (event["is_error"], event["name"]) == (True, "broken")
    assert result.output == "It is missing."


def test_an_empty_answer_is_answered_with_a_request_for_an_answer() -> None:
    model = ScriptedModel(answer(None), answer("  \n"), answer("Finally."))
    events = Events()
    result = run(model, events=events)

    assert result.output == "Finally."
    assert result.rounds == 3
    last = [dict(m) for m in model.requests[2].messages]
    assert last[-1] == {"role": "user", "content": "Your last reply was empty. Please answer."}
    assert last[-2] == {"role": "assistant", "content": "  \n"}
    notices = events.of("agent_notice")
    assert [(n["kind"], n["round"]) for n in notices] == [("empty_answer", 1), ("empty_answer", 2)]
    assert "'stop'" in notices[0]["detail"]


def test_empty_answers_count_against_the_rounds() -> None:
    model = ScriptedModel(answer(None), answer(None))
    with pytest.raises(StepFailedError, match="no final answer after 2 rounds"):
        run(model, limits=AgentLimits(max_rounds=2))
    assert len(model.requests) == 2


def test_running_out_of_rounds_fails_the_step() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(*(calls(("echo", f'{{"n": {n}}}')) for n in range(3)))
    with pytest.raises(StepFailedError, match="no final answer after 3 rounds") as info:
        run(model, toolbox, limits=AgentLimits(max_rounds=3))
    assert "in round 3, the last, the model still called echo" in info.value.message
    assert len(model.requests) == 3
    # The last round offers no tools, so its call is not run.
    assert toolbox.received == [("echo", {"n": 0}), ("echo", {"n": 1})]


# --- failures that end the run ------------------------------------------------------------


def stuck_tool(cancelled: list[bool]) -> Tool:
    """A tool that never returns and notes whether it was cancelled."""

    async def stuck(arguments: Mapping[str, Any]) -> ToolResult:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        raise AssertionError("unreachable")

    return stuck


def test_the_timeout_bounds_a_slow_tool_and_cancels_it() -> None:
    cancelled: list[bool] = []

    async def scenario() -> None:
        model = ScriptedModel(calls(("stuck", "{}")))
        toolbox = FakeToolbox(stuck=stuck_tool(cancelled))
        with pytest.raises(StepFailedError, match=r"timeout of 0\.05 s \(in round 1\)"):
            await go(model, toolbox, limits=AgentLimits(timeout=0.05))
        assert cancelled == [True]

    asyncio.run(scenario())


def test_the_timeout_bounds_a_model_that_never_answers() -> None:
    with pytest.raises(StepFailedError, match="no final answer within the timeout"):
        run(HangingModel(), limits=AgentLimits(timeout=0.05))


def test_a_dead_server_fails_the_step_and_cancels_the_other_calls() -> None:
    cancelled: list[bool] = []
    model = ScriptedModel(calls(("stuck", "{}"), ("dead", "{}")))

    async def scenario() -> None:
        toolbox = FakeToolbox(stuck=stuck_tool(cancelled), dead=dead_server)
        with pytest.raises(MCPServerError, match="exited with code 1"):
            await go(model, toolbox)
        assert cancelled == [True]

    asyncio.run(scenario())
    assert len(model.requests) == 1


# --- tool_choice --------------------------------------------------------------------------


@pytest.mark.parametrize("choice", [None, "auto", "required"])
def test_plain_tool_choices_are_sent_as_they_are(choice: str | None) -> None:
    model = ScriptedModel(answer("ok"))
    run(model, FakeToolbox(echo=echo), tool_choice=choice)

    [request] = model.requests
    assert request.tool_choice == choice
    assert [t["function"]["name"] for t in request.tools] == ["echo"]


def test_a_named_tool_choice_forces_that_tool_in_the_first_round_then_falls_back_to_auto() -> None:
    model = ScriptedModel(calls(("echo", "{}")), answer("ok"))
    events = Events()
    run(model, FakeToolbox(echo=echo, broken=broken), tool_choice="echo", events=events)

    assert model.requests[0].tool_choice == {"type": "function", "function": {"name": "echo"}}
    assert model.requests[1].tool_choice == "auto"
    assert [e["params"]["tool_choice"] for e in events.of("llm_request")] == [
        {"type": "function", "function": {"name": "echo"}},
        "auto",
    ]


def test_required_tool_choice_falls_back_to_auto_after_the_first_calls() -> None:
    model = ScriptedModel(calls(("echo", "{}")), answer("ok"))
    run(model, FakeToolbox(echo=echo), tool_choice="required")
    assert [r.tool_choice for r in model.requests] == ["required", "auto"]


def test_a_tool_choice_naming_a_tool_not_offered_is_a_configuration_error() -> None:
    model = ScriptedModel(answer("ok"))
    with pytest.raises(ConfigurationError, match="'read_file' is not one of the offered") as info:
        run(model, FakeToolbox(echo=echo), tool_choice="read_file")
    assert info.value.hint == "offered: echo"
    assert model.requests == []


@pytest.mark.parametrize("choice", ["required", "echo"])
def test_a_forced_tool_choice_without_tools_is_a_configuration_error(choice: str) -> None:
    model = ScriptedModel(answer("ok"))
    with pytest.raises(ConfigurationError, match="needs tools, but none are offered"):
        run(model, None, tool_choice=choice)
    assert model.requests == []


@pytest.mark.parametrize("toolbox", [None, FakeToolbox(echo=echo)], ids=["no toolbox", "none"])
def test_no_tools_are_offered_without_a_toolbox_or_with_tool_choice_none(
    toolbox: FakeToolbox | None,
) -> None:
    model = ScriptedModel(calls(("echo", "{}")), answer("ok"))
    run(model, toolbox, tool_choice="none" if toolbox else None)

    assert [(r.tools, r.tool_choice) for r in model.requests] == [((), None), ((), None)]
    [reply] = tool_messages(model.requests[1])
    assert reply["content"] == "error: there is no tool named 'echo'. No tools are available now."
    assert toolbox is None or toolbox.received == []


# --- structured output --------------------------------------------------------------------

RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "output", "strict": True, "schema": SCHEMA},
}


def test_output_schema_without_tools_is_sent_as_response_format_and_parsed() -> None:
    model = ScriptedModel(answer('{"modules": ["a.py", "b.py"]}'))
    events = Events()
    result = run(model, output_schema=SCHEMA, events=events)

    assert result.output == {"modules": ["a.py", "b.py"]}
    assert result.text == '{"modules": ["a.py", "b.py"]}'
    assert model.requests[0].response_format == RESPONSE_FORMAT
    assert model.requests[0].messages[-1]["content"] == "Survey the repository."
    assert events.of("llm_request")[0]["params"]["response_format"] == RESPONSE_FORMAT


def test_output_schema_with_tools_states_the_schema_in_the_prompt_not_as_response_format() -> None:
    model = ScriptedModel(calls(("echo", "{}")), answer('{"modules": []}'))
    result = run(model, FakeToolbox(echo=echo), output_schema=SCHEMA)

    assert result.output == {"modules": []}
    assert [r.response_format for r in model.requests] == [None, None]
    prompt = model.requests[0].messages[-1]["content"]
    assert prompt.startswith("Survey the repository.\n\n")
    assert json.dumps(SCHEMA) in prompt


def test_a_mismatch_is_repaired_with_a_message_naming_what_is_wrong() -> None:
    model = ScriptedModel(
        answer('{"modules": ["a.py", 7]}'),
        answer('{"files": []}'),
        answer('{"modules": ["a.py"]}'),
    )
    events = Events()
    result = run(model, FakeToolbox(echo=echo), output_schema=SCHEMA, events=events)

    assert result.output == {"modules": ["a.py"]}
    assert result.rounds == 3
    first_repair = model.requests[1].messages[-1]
    assert first_repair["role"] == "user"
    assert "- at $.modules[1]: 7 is not of type 'string'" in first_repair["content"]
    assert "- at $: 'modules' is a required property" in model.requests[2].messages[-1]["content"]
    # The repair asks for the schema alone: no tools, the schema enforced by the server.
    assert [(bool(r.tools), r.response_format) for r in model.requests] == [
        (True, None),
        (False, RESPONSE_FORMAT),
        (False, RESPONSE_FORMAT),
    ]
    assert model.requests[1].tool_choice is None
    assert [(n["kind"], n["round"]) for n in events.of("agent_notice")] == [
        ("schema_repair", 1),
        ("schema_repair", 2),
    ]


def test_an_answer_that_is_not_json_is_repaired() -> None:
    model = ScriptedModel(answer("The modules are a.py and b.py."), answer('{"modules": []}'))
    result = run(model, output_schema=SCHEMA)

    assert result.output == {"modules": []}
    assert "the answer is not valid JSON" in model.requests[1].messages[-1]["content"]


def test_the_step_fails_when_the_repairs_run_out() -> None:
    model = ScriptedModel(answer("[]"), answer("{}"))
    with pytest.raises(StepFailedError, match="after 1 repair") as info:
        run(model, output_schema=SCHEMA, limits=AgentLimits(max_repairs=1))
    assert "'modules' is a required property" in info.value.message
    assert len(model.requests) == 2


def test_no_repairs_allowed_fails_at_the_first_mismatch() -> None:
    model = ScriptedModel(answer("{}"))
    with pytest.raises(StepFailedError, match="after 0 repair"):
        run(model, output_schema=SCHEMA, limits=AgentLimits(max_repairs=0))
    assert len(model.requests) == 1


def test_repairs_come_on_top_of_the_rounds() -> None:
    model = ScriptedModel(answer("{}"), answer('{"modules": ["x"]}'))
    result = run(model, output_schema=SCHEMA, limits=AgentLimits(max_rounds=1))
    assert (result.output, result.rounds) == ({"modules": ["x"]}, 2)


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"modules": ["a.py"]}\n```',
        'Here it is:\n```\n{"modules": ["a.py"]}\n```\nDone.',
        ' {"modules": ["a.py"]}\n',
    ],
    ids=["json fence", "bare fence in prose", "whitespace"],
)
def test_fenced_json_is_accepted(text: str) -> None:
    result = run(ScriptedModel(answer(text)), output_schema=SCHEMA)
    assert result.output == {"modules": ["a.py"]}
    assert result.text == text


def test_json_that_contains_a_fence_is_read_as_it_is() -> None:
    text = json.dumps({"modules": ["```py\nx\n```"]})
    result = run(ScriptedModel(answer(text)), output_schema=SCHEMA)
    assert result.output == {"modules": ["```py\nx\n```"]}


def test_a_frozen_output_schema_is_used_as_plain_json() -> None:
    frozen = MappingProxyType(
        {
            "type": "object",
            "properties": MappingProxyType({"modules": MappingProxyType({"type": "array"})}),
            "required": ("modules",),
        }
    )
    model = ScriptedModel(answer("{}"), answer('{"modules": []}'))
    result = run(model, FakeToolbox(echo=echo), output_schema=frozen)

    assert result.output == {"modules": []}
    plain = {
        "type": "object",
        "properties": {"modules": {"type": "array"}},
        "required": ["modules"],
    }
    assert json.dumps(plain) in model.requests[0].messages[-1]["content"]
    assert model.requests[1].response_format["json_schema"]["schema"] == plain


@pytest.mark.parametrize(
    "ref", ["#/defs/item", "https://example.com/item.json", "item.json"], ids=str
)
def test_an_unresolvable_ref_in_the_output_schema_fails_the_step_naming_it(ref: str) -> None:
    schema = {"type": "object", "properties": {"item": {"$ref": ref}}}
    model = ScriptedModel(answer('{"item": 1}'))
    with pytest.raises(StepFailedError, match="cannot be resolved") as caught:
        run(model, output_schema=schema)
    assert caught.value.message.endswith(ref.lstrip("#"))
    assert "$defs" in (caught.value.hint or "")


def test_an_invalid_output_schema_is_a_configuration_error() -> None:
    model = ScriptedModel(answer("{}"))
    with pytest.raises(ConfigurationError, match="output_schema is not a valid JSON Schema"):
        run(model, output_schema={"type": "objet"})
    assert model.requests == []


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_rounds": 0}, "max_rounds must be at least 1"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"max_repairs": -1}, "max_repairs must not be negative"),
    ],
)
def test_impossible_limits_are_a_configuration_error(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AgentLimits(**limits)


# --- events -------------------------------------------------------------------------------


def test_events_record_every_request_response_call_and_result() -> None:
    toolbox = FakeToolbox(echo=echo, broken=broken)
    model = ScriptedModel(
        ChatResponse(
            "Let me look.",
            (
                ToolCall("c1", "echo", '{"q": 1}'),
                ToolCall("c2", "broken", "{}"),
                ToolCall("c3", "nope", "{bad"),
            ),
            "tool_calls",
            reasoning="I should call echo.",
            usage=Usage(7, 4),
        ),
        answer("All done.", usage=Usage(9, 2)),
    )
    events = Events()
    run(model, toolbox, system="sys", temperature=0.1, tool_choice="auto", events=events)

    assert events.kinds() == [
        "llm_request",
        "llm_response",
        "tool_call",
        "tool_call",
        "tool_call",
        "agent_notice",
        "tool_result",
        "tool_result",
        "tool_result",
        "llm_request",
        "llm_response",
    ]
    requests = events.of("llm_request")
    assert requests[0] == {
        "round": 1,
        "model": "qwen/qwen3-4b",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Survey the repository."},
        ],
        "tools": ["echo", "broken"],
        "params": {"temperature": 0.1, "max_tokens": None, "tool_choice": "auto"},
    }
    # The second request records only what was added since the first.
    assert [m["role"] for m in requests[1]["messages"]] == ["assistant", "tool", "tool", "tool"]
    assert requests[1]["round"] == 2
    assert events.of("llm_response")[0] == {
        "round": 1,
        "content": "Let me look.",
        "tool_calls": [
            {"id": "c1", "name": "echo", "arguments": '{"q": 1}'},
            {"id": "c2", "name": "broken", "arguments": "{}"},
            {"id": "c3", "name": "nope", "arguments": "{bad"},
        ],
        "finish_reason": "tool_calls",
        "reasoning": "I should call echo.",
        "usage": {"prompt_tokens": 7, "completion_tokens": 4},
    }
    assert events.of("tool_call") == [
        {"round": 1, "id": "c1", "name": "echo", "arguments": {"q": 1}},
        {"round": 1, "id": "c2", "name": "broken", "arguments": {}},
        {"round": 1, "id": "c3", "name": "nope", "arguments": "{bad"},
    ]
    [notice] = events.of("agent_notice")
    assert notice["kind"] == "unknown_tool"
    assert notice["detail"].startswith("error: there is no tool named 'nope'")
    assert [(e["id"], e["is_error"], e["content"]) for e in events.of("tool_result")] == [
        ("c1", False, '{"q": 1}'),
        ("c2", True, "error: file not found: nope.txt"),
        ("c3", True, "error: there is no tool named 'nope'. Available tools: echo, broken."),
    ]
    assert events.of("llm_response")[1]["round"] == 2
    assert all(json.dumps(fields) for _, fields in events)  # the run log can write them


# --- no endless tool loops ----------------------------------------------------------------


class LoopingModel:
    """A small model caught in a loop: the same call whenever tools are offered, an answer
    only when none are. Keeps every request."""

    def __init__(self, name: str, arguments: str, answer_text: str = "It is noon.") -> None:
        self.call = ToolCall("call_x", name, arguments)
        self.answer_text = answer_text
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        if request.tools:
            return ChatResponse(None, (self.call,), "tool_calls", usage=Usage(100, 10))
        return ChatResponse(self.answer_text, finish_reason="stop", usage=Usage(120, 4))


def test_a_repeated_identical_call_is_answered_from_the_earlier_result_with_a_note() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(
        calls(("echo", '{"a": 1, "b": [2]}')),
        calls(("echo", '{"b": [2],  "a": 1}')),  # the same arguments, written differently
        answer("done"),
    )
    events = Events()
    result = run(model, toolbox, events=events)

    assert toolbox.received == [("echo", {"a": 1, "b": [2]})]
    [reply] = tool_messages(model.requests[2])[1:]
    assert reply["content"].startswith('{"a": 1, "b": [2]}\n\n[note: you already called echo')
    assert (
        "in round 1; this is the same result. Do not call it again: answer now.]"
        in (reply["content"])
    )
    [notice] = events.of("agent_notice")
    assert (notice["kind"], notice["round"]) == ("repeated_call", 2)
    assert (result.output, result.rounds, result.tool_calls) == ("done", 3, 2)


def test_the_same_call_twice_in_one_turn_runs_once() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(calls(("echo", '{"x": 1}'), ("echo", '{"x": 1}')), answer("ok"))
    run(model, toolbox)

    assert toolbox.received == [("echo", {"x": 1})]
    first, second = tool_messages(model.requests[1])
    assert first["content"] == '{"x": 1}'
    assert second["content"].startswith('{"x": 1}\n\n[note: you already called echo')


def test_a_repeated_failing_call_is_told_to_change_its_arguments() -> None:
    toolbox = FakeToolbox(broken=broken)
    model = ScriptedModel(calls(("broken", "{}")), calls(("broken", "{}")), answer("gone"))
    run(model, toolbox)

    assert len(toolbox.received) == 1
    [reply] = tool_messages(model.requests[2])[1:]
    assert reply["content"].startswith("error: file not found")
    assert reply["content"].endswith("Change the arguments or answer now.]")


def test_calls_with_other_arguments_are_not_repeats() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(calls(("echo", '{"x": 1}')), calls(("echo", '{"x": 2}')), answer("ok"))
    events = Events()
    run(model, toolbox, events=events)

    assert toolbox.received == [("echo", {"x": 1}), ("echo", {"x": 2})]
    assert events.of("agent_notice") == []


def test_the_last_round_offers_no_tools_and_asks_for_the_answer() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(calls(("echo", "{}")), answer("ok"))
    events = Events()
    result = run(model, toolbox, limits=AgentLimits(max_rounds=2), events=events)

    assert result.output == "ok"
    first, last = model.requests
    assert [t["function"]["name"] for t in first.tools] == ["echo"]
    assert (last.tools, last.tool_choice) == ((), None)
    assert dict(last.messages[-1]) == {
        "role": "user",
        "content": "This is your last turn and no more tools can be called. "
        "Answer now with what you have.",
    }
    [notice] = events.of("agent_notice")
    assert (notice["kind"], notice["round"]) == ("last_round", 2)
    assert [e["tools"] for e in events.of("llm_request")] == [["echo"], []]


def test_a_small_model_stuck_on_one_call_still_answers() -> None:
    """Gemma 3 270M's loop (issue 10): the same call every round it is offered tools."""
    toolbox = FakeToolbox(clock=echo)
    model = LoopingModel("clock", '{"timezone": "UTC"}')
    events = Events()
    result = run(
        model,
        toolbox,
        tool_choice="clock",
        limits=AgentLimits(max_rounds=3),
        events=events,
    )

    assert result.output == "It is noon."
    assert toolbox.received == [("clock", {"timezone": "UTC"})]
    assert [r.tool_choice for r in model.requests] == [
        {"type": "function", "function": {"name": "clock"}},
        "auto",
        None,
    ]
    assert [n["kind"] for n in events.of("agent_notice")] == ["repeated_call", "last_round"]
    assert (result.rounds, result.tool_calls, result.usage) == (3, 2, Usage(320, 24))


def test_a_forced_tool_choice_applies_to_the_first_round_even_without_a_call() -> None:
    model = ScriptedModel(answer(None), answer("ok"))
    events = Events()
    run(model, FakeToolbox(echo=echo), tool_choice="required", events=events)

    assert [r.tool_choice for r in model.requests] == ["required", "auto"]
    assert [e["params"]["tool_choice"] for e in events.of("llm_request")] == [
        "required",
        "auto",
    ]


def test_a_forced_tool_choice_needs_a_round_for_the_answer() -> None:
    model = ScriptedModel(answer("ok"))
    with pytest.raises(ConfigurationError, match="max_rounds 1 leaves no round") as info:
        run(model, FakeToolbox(echo=echo), tool_choice="echo", limits=AgentLimits(max_rounds=1))
    assert info.value.hint == "set max_rounds to 2 or more: the last round offers no tools"
    assert model.requests == []


def test_an_empty_last_reply_fails_with_that_reason() -> None:
    model = ScriptedModel(answer(None))
    with pytest.raises(StepFailedError) as info:
        run(model, limits=AgentLimits(max_rounds=1))
    assert info.value.message == "no final answer after 1 rounds: its last reply was empty"


# --- honest accounting --------------------------------------------------------------------


def test_a_failed_run_tallies_its_rounds_calls_and_tokens() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(
        *(
            ChatResponse(
                None, (ToolCall(f"c{n}", "echo", f'{{"n": {n}}}'),), usage=Usage(10 * n, n)
            )
            for n in (1, 2, 3)
        )
    )
    tally = AgentTally()
    with pytest.raises(StepFailedError, match="no final answer after 3 rounds"):
        run(model, toolbox, limits=AgentLimits(max_rounds=3), tally=tally)
    assert (tally.rounds, tally.tool_calls, tally.usage) == (3, 3, Usage(60, 6))


def test_a_timed_out_run_tallies_what_it_spent() -> None:
    async def scenario() -> AgentTally:
        tally = AgentTally()
        model = ScriptedModel(calls(("stuck", "{}")))
        toolbox = FakeToolbox(stuck=stuck_tool([]))
        with pytest.raises(StepFailedError, match="timeout"):
            await go(model, toolbox, limits=AgentLimits(timeout=0.05), tally=tally)
        return tally

    tally = asyncio.run(scenario())
    assert (tally.rounds, tally.tool_calls) == (1, 1)


# --- tool calls the server did not parse --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "form"),
    [
        (
            'Let me look.\n<tool_call>\n{"name": "echo", "arguments": {"path": "src"}}\n'
            "</tool_call>",
            "<tool_call>",
        ),
        ('<tool_call>{"name": "echo", "arguments": {"path": "src"}}', "<tool_call>"),
        (
            '[TOOL_REQUEST]{"name": "echo", "arguments": {"path": "src"}}[END_TOOL_REQUEST]',
            "[TOOL_REQUEST]",
        ),
        ('{"name": "echo", "arguments": {"path": "src"}}', "JSON object"),
        ('{"name": "echo", "parameters": {"path": "src"}}', "JSON object"),
        ('```json\n{"name": "echo", "arguments": "{\\"path\\": \\"src\\"}"}\n```', "JSON object"),
        ('<tool_call>{"name": "echo", "arguments": {"path": "src"</tool_call>', "<tool_call>"),
    ],
    ids=["hermes", "hermes-unclosed", "lmstudio", "bare", "parameters", "fenced", "broken"],
)
def test_a_tool_call_written_as_text_is_recovered_and_run(text: str, form: str) -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(answer(text), answer("src holds code"))
    events = Events()
    result = run(model, toolbox, events=events)

    assert toolbox.received == [("echo", {"path": "src"})]
    assert result.output == "src holds code"
    assert result.tool_calls == 1
    [notice] = events.of("agent_notice")
    assert notice["kind"] == "recovered_tool_call"
    assert f"written as {form} text: echo" in notice["detail"]
    assistant = dict(model.requests[1].messages[-2])
    assert assistant["tool_calls"][0]["function"] == {
        "name": "echo",
        "arguments": '{"path": "src"}',
    }
    assert tool_messages(model.requests[1])[0]["tool_call_id"] == "recovered_1_1"


def test_several_written_calls_are_all_recovered() -> None:
    toolbox = FakeToolbox(echo=echo)
    text = (
        '<tool_call>{"name": "echo", "arguments": {"n": 1}}</tool_call>\n'
        '<tool_call>{"name": "echo", "arguments": {"n": 2}}</tool_call>'
    )
    model = ScriptedModel(answer(text), answer("ok"))
    run(model, toolbox)
    assert toolbox.received == [("echo", {"n": 1}), ("echo", {"n": 2})]


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        '{"name": "rm_rf", "arguments": {}}',
        '{"name": "echo", "arguments": {}, "confidence": 0.9}',
        "I would call echo with path src.",
        '{"modules": ["a.py"]}',
        '<tool_call>{"name": "echo", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        '[TOOL_REQUEST]{"name": "echo", "arguments": [1]}[END_TOOL_REQUEST]',
    ],
    ids=[
        "tag-unknown-tool",
        "bare-unknown-tool",
        "extra-keys",
        "prose",
        "plain-json",
        "one-of-two-unknown",
        "arguments-not-an-object",
    ],
)
def test_text_that_does_not_call_an_offered_tool_stays_the_answer(text: str) -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(answer(text))
    result = run(model, toolbox)
    assert (result.output, toolbox.received) == (text, [])


def test_written_calls_are_not_recovered_when_no_tools_are_offered() -> None:
    text = '{"name": "echo", "arguments": {}}'
    model = ScriptedModel(answer(text))
    result = run(model, FakeToolbox(echo=echo), tool_choice="none")
    assert result.output == text


def test_broken_argument_json_is_repaired_before_a_round_is_spent() -> None:
    toolbox = FakeToolbox(echo=echo)
    model = ScriptedModel(calls(("echo", "{'path': 'src', }")), answer("ok"))
    events = Events()
    result = run(model, toolbox, events=events)

    assert toolbox.received == [("echo", {"path": "src"})]
    assert result.rounds == 2
    [notice] = events.of("agent_notice")
    assert notice["kind"] == "repaired_arguments"
    assert notice["detail"] == "echo: {'path': 'src', } -> {\"path\": \"src\"}"
    assert events.of("llm_response")[0]["tool_calls"][0]["arguments"] == "{'path': 'src', }"
    assert events.of("tool_call")[0]["arguments"] == {"path": "src"}
    # The conversation carries the repaired call, which any server's template can read.
    assistant = dict(model.requests[1].messages[-2])
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"path": "src"}'
    assert tool_messages(model.requests[1])[0]["content"] == '{"path": "src"}'
