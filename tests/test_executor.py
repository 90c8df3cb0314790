"""The executor with small fakes of our own interfaces: a scripted ChatModel and a ToolProvider.

Workflows are written as YAML and go through the real loader and validator, so each test
runs the same Workflow a user's file would give.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hostile import ALIAS_BOMB, ALIAS_LOOP, nested_block_yaml, nested_list

from runner.chat import ChatRequest, ChatResponse, ToolCall, ToolResult, ToolSpec, Usage
from runner.errors import (
    EXIT_ENVIRONMENT,
    EXIT_INVALID,
    ConfigurationError,
    InputError,
    LLMConnectionError,
    MCPServerError,
)
from runner.executor import (
    Executor,
    RunResult,
    base_context,
    coerce_inputs,
    render_servers,
)
from runner.runlog import MASK, Event, RunLog, SecretEnv
from runner.runtime import read_inputs
from runner.spec import parse_document, validate_document
from runner.spec.model import Workflow, build_workflow

HEAD = "version: 1\nname: test\n"
Reply = ChatResponse | Callable[[ChatRequest], ChatResponse]
ToolFn = Callable[[Mapping[str, Any]], ToolResult]


def load(body: str, *, defaults: str = "{model: qwen/qwen3-4b}", validate: bool = True) -> Workflow:
    """A Workflow from YAML through the real loader and, by default, the validator."""
    doc = parse_document(f"{HEAD}defaults: {defaults}\n{textwrap.dedent(body)}", "wf.yaml")
    if validate:
        errors = [p for p in validate_document(doc) if p.is_error]
        assert not errors, [p.message for p in errors]
    return build_workflow(Path("wf.yaml"), doc.data, doc.source)


class ScriptedChat:
    """Answers with the queued replies in order (a reply may be a function of the request)."""

    def __init__(self, *replies: Reply | str) -> None:
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        assert self.replies, "the executor asked the model more often than the script allows"
        reply = self.replies.pop(0)
        if isinstance(reply, str):
            return ChatResponse(content=reply, finish_reason="stop")
        return reply(request) if callable(reply) else reply

    def prompts(self) -> list[str]:
        """The first user message of each step's conversation."""
        return [r.messages[-1]["content"] for r in self.requests if len(r.messages) <= 2]


class FailingChat:
    """A model server that is gone."""

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise LLMConnectionError("cannot reach LM Studio at http://127.0.0.1:9")


def call(name: str, arguments: Mapping[str, Any] | str) -> ChatResponse:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ChatResponse(
        content=None, tool_calls=(ToolCall("call_1", name, raw),), finish_reason="tool_calls"
    )


class FakeToolbox:
    def __init__(self, provider: FakeTools, routes: Mapping[str, tuple[str, str]]) -> None:
        self.provider = provider
        self.routes = dict(routes)

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec(name, f"the {name} tool", {"type": "object"}) for name in self.routes]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        return await self.provider.call_tool(*self.routes[name], arguments)


class FakeTools:
    """A ToolProvider: servers given as {tool name: function}; records every call."""

    def __init__(self, **servers: Mapping[str, ToolFn]) -> None:
        self.servers = servers
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.toolboxes: list[tuple[tuple[str, ...], tuple[str, ...] | None]] = []
        self.limits: list[Mapping[str, int] | None] = []

    def toolbox(
        self,
        servers: Sequence[str],
        allow: Sequence[str] | None,
        limits: Mapping[str, int] | None = None,
    ) -> FakeToolbox:
        self.toolboxes.append((tuple(servers), None if allow is None else tuple(allow)))
        self.limits.append(limits)
        routes = {
            tool: (server, tool)
            for server in servers
            for tool in self.servers[server]
            if allow is None or tool in allow
        }
        return FakeToolbox(self, routes)

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        self.calls.append((server, tool, dict(arguments)))
        return self.servers[server][tool](arguments)


def echo(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult(json.dumps(dict(arguments), sort_keys=True))


def structured(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult("{...}", structured={"files": ["a.py", "b.py"], "count": 2})


def broken(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult("permission denied: /etc/shadow", is_error=True)


def run(
    workflow: Workflow,
    raw_inputs: Mapping[str, Any] | None = None,
    *,
    chat: Any = None,
    tools: FakeTools | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[RunResult, list[Event]]:
    log = RunLog("run-1")
    events: list[Event] = []
    log.subscribe(events.append)
    inputs = coerce_inputs(workflow, raw_inputs or {})
    env = SecretEnv(workflow.plan.env_names, log.redactor, environ or {})
    context = base_context(workflow, inputs, env, "run-1", None, "2026-01-01T00:00:00+00:00")
    executor = Executor(
        workflow, inputs, chat=chat or ScriptedChat(), tools=tools, log=log, context=context
    )
    return asyncio.run(executor.run()), events


def statuses(result: RunResult) -> dict[str, str]:
    return {step.id: step.status for step in result.steps}


def finished(events: list[Event]) -> dict[str, Mapping[str, Any]]:
    return {e.step: e.data for e in events if e.type == "step_finished" and e.step}


# --- inputs ---------------------------------------------------------------------------------

TYPED_INPUTS = """
inputs:
  text: {type: string}
  count: {type: integer}
  ratio: {type: number}
  flag: {type: boolean}
  names: {type: array}
  options: {type: object}
steps:
  - {id: s, prompt: "{{ inputs.text }}"}
"""


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("text", "007", "007"),
        ("count", " 42 ", 42),
        ("count", "-3", -3),
        ("ratio", "2.5", 2.5),
        ("ratio", "2", 2.0),
        ("flag", "true", True),
        ("flag", "Yes", True),
        ("flag", "off", False),
        ("flag", "0", False),
        ("names", '["a", 1]', ["a", 1]),
        ("options", '{"depth": 2, "deep": {"x": null}}', {"depth": 2, "deep": {"x": None}}),
    ],
)
def test_strings_from_the_command_line_become_the_declared_type(
    name: str, raw: str, value: Any
) -> None:
    workflow = load(TYPED_INPUTS)
    given = {"text": "t", "count": "1", "ratio": "1", "flag": "no", "names": "[]", "options": "{}"}
    coerced = coerce_inputs(workflow, {**given, name: raw})
    assert coerced[name] == value
    assert type(coerced[name]) is type(value)


def test_an_inputs_file_keeps_its_types_and_command_line_pairs_override_it(
    tmp_path: Path,
) -> None:
    workflow = load(TYPED_INPUTS)
    file = tmp_path / "inputs.yaml"
    file.write_text(
        "text: from file\ncount: 7\nratio: 3\nflag: true\nnames: [x, y]\noptions: {depth: 1}\n"
    )
    raw = read_inputs(file, ["count=8", "text=a=b"])
    coerced = coerce_inputs(workflow, raw)
    assert coerced == {
        "text": "a=b",  # only the first '=' splits
        "count": 8,
        "ratio": 3.0,
        "flag": True,
        "names": ["x", "y"],
        "options": {"depth": 1},
    }
    assert isinstance(coerced["ratio"], float)


def test_a_json_inputs_file_is_read_too(tmp_path: Path) -> None:
    file = tmp_path / "inputs.json"
    file.write_text('{"count": 5, "names": ["a"]}')
    assert read_inputs(file, []) == {"count": 5, "names": ["a"]}


@pytest.mark.parametrize("pair", ["count", "=5", " =5"])
def test_a_pair_without_key_and_equals_sign_is_a_command_line_error(pair: str) -> None:
    with pytest.raises(ConfigurationError, match="is not key=value") as caught:
        read_inputs(None, [pair])
    assert caught.value.exit_code == EXIT_INVALID


def test_an_inputs_file_that_is_not_a_mapping_is_a_command_line_error(tmp_path: Path) -> None:
    file = tmp_path / "inputs.yaml"
    file.write_text("- a\n- b\n")
    with pytest.raises(ConfigurationError, match="must hold a mapping"):
        read_inputs(file, [])


def test_defaults_fill_in_and_an_optional_input_without_default_is_none() -> None:
    workflow = load(
        """
        inputs:
          paths: {type: array, default: [src, tests]}
          top: {type: integer, default: 3}
          note: {type: string, required: false}
        steps:
          - {id: s, prompt: "{{ inputs.paths }}"}
        """
    )
    coerced = coerce_inputs(workflow, {})
    assert coerced == {"paths": ["src", "tests"], "top": 3, "note": None}
    assert isinstance(coerced["paths"], list)  # thawed: a template may index or extend it


def test_a_missing_required_input_is_named_with_its_type_and_description() -> None:
    workflow = load(
        """
        inputs:
          path: {type: string, description: Directory to survey}
        steps:
          - {id: s, prompt: "{{ inputs.path }}"}
        """
    )
    with pytest.raises(InputError) as caught:
        coerce_inputs(workflow, {})
    assert "input 'path' is required (string: Directory to survey)" in caught.value.message
    assert caught.value.exit_code == EXIT_INVALID
    assert caught.value.hint and "-i name=value" in caught.value.hint


def test_an_unknown_input_is_named_with_the_declared_ones() -> None:
    workflow = load("inputs:\n  path: {type: string, default: .}\nsteps:\n  - {id: s, prompt: x}\n")
    with pytest.raises(InputError, match=r"unknown input 'pth' \(declared: path\)"):
        coerce_inputs(workflow, {"pth": "src"})


def test_enum_and_minimum_are_enforced() -> None:
    workflow = load(
        """
        inputs:
          level: {type: string, enum: [low, high]}
          top: {type: integer, minimum: 1, maximum: 10}
        steps:
          - {id: s, prompt: "{{ inputs.level }} {{ inputs.top }}"}
        """
    )
    with pytest.raises(InputError) as caught:
        coerce_inputs(workflow, {"level": "medium", "top": "0"})
    message = caught.value.message
    assert "input 'level': 'medium' is not one of ['low', 'high']" in message
    assert "input 'top': 0 is less than the minimum of 1" in message
    assert coerce_inputs(workflow, {"level": "high", "top": "10"}) == {"level": "high", "top": 10}


def test_every_input_problem_is_reported_at_once() -> None:
    workflow = load(
        """
        inputs:
          path: {type: string}
          top: {type: integer, minimum: 1}
          ratio: {type: number}
          flag: {type: boolean}
          names: {type: array}
        steps:
          - {id: s, prompt: "{{ inputs.path }}"}
        """
    )
    with pytest.raises(InputError) as caught:
        coerce_inputs(
            workflow,
            {"top": "three", "ratio": "fast", "flag": "maybe", "names": "[a", "extra": "1"},
        )
    problems = caught.value.message.split("; ")
    assert problems == [
        "unknown input 'extra' (declared: path, top, ratio, flag, names)",
        "input 'path' is required (string)",
        "input 'top': 'three' is not an integer",
        "input 'ratio': 'fast' is not a number",
        "input 'flag': 'maybe' is not a boolean (use true or false)",
        "input 'names': '[a' is not JSON for an array: Expecting value",
    ]


def test_a_file_value_of_the_wrong_type_is_an_error_not_a_conversion() -> None:
    workflow = load(TYPED_INPUTS)
    given = {"text": 5, "count": 1.5, "ratio": 1, "flag": True, "names": {}, "options": {}}
    with pytest.raises(InputError) as caught:
        coerce_inputs(workflow, given)
    assert "input 'text': 5 is not of type 'string'" in caught.value.message
    assert "input 'count': 1.5 is not of type 'integer'" in caught.value.message
    assert "input 'names': {} is not of type 'array'" in caught.value.message


# --- plan -----------------------------------------------------------------------------------


def test_steps_run_in_file_order_without_needs() -> None:
    workflow = load(
        """
        steps:
          - {id: c, prompt: x}
          - {id: a, prompt: x}
          - {id: b, prompt: "{{ steps.c.output }}"}
        """
    )
    assert workflow.plan.order() == ["c", "a", "b"]


def test_needs_moves_a_step_only_as_far_as_it_must_go() -> None:
    workflow = load(
        """
        steps:
          - {id: report, needs: [collect], prompt: "{{ steps.collect.output }}"}
          - {id: greet, prompt: x}
          - {id: collect, prompt: x}
          - {id: tail, prompt: x}
        """
    )
    assert workflow.plan.order() == ["greet", "collect", "report", "tail"]


def test_references_in_prompt_if_and_with_are_dependencies() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: a, prompt: x}
          - {id: b, prompt: x}
          - {id: c, prompt: x}
          - id: d
            if: steps.a.status == 'succeeded'
            system: "{{ steps.b.output }}"
            prompt: plain text
          - id: e
            tool: fs.read
            with: {path: "{{ steps.c.output }}", rest: ["{{ steps.d.output }}"]}
        """
    )
    waits = workflow.plan.dependencies()
    assert waits["d"] == {"a", "b"}
    assert waits["e"] == {"c", "d"}
    assert waits["a"] == set()


def test_a_hand_built_forward_reference_runs_after_the_step_it_reads() -> None:
    workflow = load(
        """
        steps:
          - {id: early, prompt: "{{ steps.late.output }}"}
          - {id: late, prompt: x}
        """,
        validate=False,
    )
    assert workflow.plan.order() == ["late", "early"]


# --- conditions, failures, skipping ---------------------------------------------------------


def test_a_false_condition_skips_the_step_and_records_it_as_skipped() -> None:
    workflow = load(
        """
        inputs:
          deep: {type: boolean, default: false}
        steps:
          - {id: survey, if: inputs.deep, prompt: look deeper}
          - {id: summary, prompt: sum up}
        """
    )
    chat = ScriptedChat("summary done")
    result, events = run(workflow, chat=chat)
    assert statuses(result) == {"survey": "skipped", "summary": "succeeded"}
    assert result.status == "succeeded"
    assert result.steps[0].reason == "condition is false: inputs.deep"
    assert chat.prompts() == ["sum up"]
    assert finished(events)["survey"]["status"] == "skipped"
    assert [e.step for e in events if e.type == "step_started"] == ["summary"]

    result, _ = run(workflow, {"deep": "true"}, chat=ScriptedChat("deep", "done"))
    assert statuses(result) == {"survey": "succeeded", "summary": "succeeded"}


def test_failing_fast_a_failed_step_stops_the_run_and_later_steps_are_skipped() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: first, prompt: x}
          - {id: read, needs: first, tool: fs.read, with: {path: /etc/shadow}}
          - {id: after, needs: read, if: true, prompt: never asked}
          - {id: last, needs: read, if: true, prompt: never asked}
        outputs:
          first: "{{ steps.first.output }}"
        """,
        defaults="{model: qwen/qwen3-4b, fail_fast: true}",
    )
    chat = ScriptedChat("first answer")
    result, events = run(workflow, chat=chat, tools=FakeTools(fs={"read": broken}))
    assert result.status == "failed"
    assert statuses(result) == {
        "first": "succeeded",
        "read": "failed",
        "after": "skipped",
        "last": "skipped",
    }
    assert result.error == "step 'read' failed: tool fs.read failed: permission denied: /etc/shadow"
    assert result.steps[2].reason == "the run stopped after step 'read' failed"
    assert len(chat.requests) == 1
    assert result.outputs == {"first": "first answer"}  # outputs still rendered
    assert events[-1].type == "step_finished"  # the run's own end is told by runtime


def test_continue_on_error_lets_the_run_go_on_and_dependants_are_skipped() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: read, tool: fs.read, with: {path: x}, continue_on_error: true}
          - {id: independent, prompt: "on its own"}
          - {id: dependant, prompt: "uses {{ steps.read.output }}"}
          - {id: grandchild, prompt: "uses {{ steps.dependant.output }}"}
          - id: fallback
            if: steps.read.status == 'failed'
            prompt: "read was {{ steps.read.status }}, output {{ steps.read.output }}"
        """
    )
    chat = ScriptedChat("ok", "fell back")
    result, _ = run(workflow, chat=chat, tools=FakeTools(fs={"read": broken}))
    assert statuses(result) == {
        "read": "failed",
        "independent": "succeeded",
        "dependant": "skipped",
        "grandchild": "skipped",
        "fallback": "succeeded",
    }
    reasons = {s.id: s.reason for s in result.steps}
    assert reasons["dependant"] == "step 'read' failed"
    assert reasons["grandchild"] == "step 'dependant' skipped"
    assert chat.prompts() == ["on its own", "read was failed, output None"]
    # The failure was allowed: the run as a whole succeeded.
    assert result.status == "succeeded"


def test_a_step_after_a_skipped_one_is_skipped_unless_its_own_condition_allows_it() -> None:
    workflow = load(
        """
        steps:
          - {id: optional, if: false, prompt: x}
          - {id: reader, prompt: "{{ steps.optional.output }}"}
          - {id: waiter, needs: [optional], prompt: x}
          - {id: guarded, if: "steps.optional.status == 'skipped'", prompt: "it was skipped"}
        """
    )
    chat = ScriptedChat("ran")
    result, _ = run(workflow, chat=chat)
    assert statuses(result) == {
        "optional": "skipped",
        "reader": "skipped",
        "waiter": "skipped",
        "guarded": "succeeded",
    }
    assert result.steps[2].reason == "step 'optional' skipped"
    assert chat.prompts() == ["it was skipped"]


def test_a_condition_that_cannot_be_evaluated_fails_the_step() -> None:
    workflow = load(
        """
        steps:
          - {id: a, prompt: x}
          - {id: b, if: "steps.a.output.missing > 1", prompt: y}
        """
    )
    result, _ = run(workflow, chat=ScriptedChat("plain text"))
    assert statuses(result) == {"a": "succeeded", "b": "failed"}
    assert result.steps[1].error is not None and result.steps[1].error.startswith("if: ")


def test_a_model_server_that_goes_away_fails_the_step_not_the_process() -> None:
    workflow = load("steps:\n  - {id: a, prompt: x}\n  - {id: b, prompt: '{{ steps.a.output }}'}\n")
    result, _ = run(workflow, chat=FailingChat())
    assert statuses(result) == {"a": "failed", "b": "skipped"}
    assert result.steps[1].reason == "step 'a' failed"
    assert result.steps[0].error == "cannot reach LM Studio at http://127.0.0.1:9"


# --- tool steps and outputs -----------------------------------------------------------------


def test_a_tool_step_renders_with_keeping_native_values_from_a_lone_expression() -> None:
    workflow = load(
        """
        inputs:
          top: {type: integer, default: 3}
          paths: {type: array, default: [src, tests]}
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - id: list
            tool: fs.list
            with:
              top: "{{ inputs.top }}"
              paths: "{{ inputs.paths }}"
              label: "top {{ inputs.top }}"
              nested: {items: ["{{ inputs.top + 1 }}", literal]}
              raw: 5
        """
    )
    tools = FakeTools(fs={"list": structured})
    result, events = run(workflow, tools=tools)
    arguments = {
        "top": 3,
        "paths": ["src", "tests"],
        "label": "top 3",
        "nested": {"items": [4, "literal"]},
        "raw": 5,
    }
    assert tools.calls == [("fs", "list", arguments)]
    assert result.steps[0].output == {"files": ["a.py", "b.py"], "count": 2}
    assert result.steps[0].tool_calls == 1
    call_event = next(e for e in events if e.type == "tool_call")
    assert call_event.step == "list" and call_event.data["arguments"] == arguments


def test_a_tool_step_without_structured_content_outputs_the_text() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: e, tool: fs.echo, with: {text: hi}}
        outputs:
          text: "{{ steps.e.output }}"
        """
    )
    result, _ = run(workflow, tools=FakeTools(fs={"echo": echo}))
    assert result.outputs == {"text": '{"text": "hi"}'}


def test_outputs_keep_native_values_and_render_text() -> None:
    workflow = load(
        """
        inputs:
          top: {type: integer, default: 2}
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: list, tool: fs.list}
        outputs:
          files: "{{ steps.list.output.files }}"
          first: "{{ steps.list.output.files[0] }}"
          count: "{{ steps.list.output.count }}"
          summary: "{{ steps.list.output.count }} files, top {{ inputs.top }}"
          fixed: [1, "{{ inputs.top }}"]
        """
    )
    result, _ = run(workflow, tools=FakeTools(fs={"list": structured}))
    assert result.outputs == {
        "files": ["a.py", "b.py"],
        "first": "a.py",
        "count": 2,
        "summary": "2 files, top 2",
        "fixed": [1, 2],
    }


def test_an_output_that_cannot_be_rendered_fails_the_run() -> None:
    workflow = load(
        """
        steps:
          - {id: a, if: false, prompt: x}
        outputs:
          count: "{{ steps.a.output.count }}"
        """
    )
    result, _ = run(workflow)
    assert result.status == "failed"
    assert result.outputs == {"count": None}
    assert result.error is not None and result.error.startswith("output 'count':")


def test_a_structured_step_outputs_the_parsed_object_for_later_templates() -> None:
    workflow = load(
        """
        steps:
          - id: risks
            prompt: Name the risky modules.
            output_schema:
              type: object
              properties: {modules: {type: array, items: {type: string}}, worst: {type: string}}
              required: [modules, worst]
          - id: fix
            if: steps.risks.output.modules | length > 1
            prompt: "Fix {{ steps.risks.output.worst }} of {{ steps.risks.output.modules|tojson }}"
        outputs:
          modules: "{{ steps.risks.output.modules }}"
          fixed: "{{ steps.fix.output }}"
        """
    )
    chat = ScriptedChat('{"modules": ["mcp.py", "agent.py"], "worst": "mcp.py"}', "fixed it")
    result, _ = run(workflow, chat=chat)
    assert result.steps[0].output == {"modules": ["mcp.py", "agent.py"], "worst": "mcp.py"}
    assert chat.requests[0].response_format is not None
    assert chat.requests[0].response_format["json_schema"]["schema"]["required"] == [
        "modules",
        "worst",
    ]
    assert chat.prompts()[1] == 'Fix mcp.py of ["mcp.py", "agent.py"]'
    assert result.outputs == {"modules": ["mcp.py", "agent.py"], "fixed": "fixed it"}


def test_an_agent_step_gets_the_tools_of_its_servers_and_its_settings() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
          mem: {command: mem-server}
        steps:
          - id: a
            mcp: [fs, mem]
            tools: [read, remember]
            system: "You work on {{ workflow.name }}."
            prompt: go
            max_tokens: 100
        """,
        defaults="{model: qwen/qwen3-4b, temperature: 0.3, max_rounds: 4}",
    )
    tools = FakeTools(fs={"read": echo, "write": echo}, mem={"remember": echo})
    chat = ScriptedChat(call("read", {"path": "a"}), "done")
    result, _ = run(workflow, chat=chat, tools=tools)
    assert result.status == "succeeded"
    assert tools.toolboxes == [(("fs", "mem"), ("read", "remember"))]
    first = chat.requests[0]
    assert [t["function"]["name"] for t in first.tools] == ["read", "remember"]
    assert first.temperature == 0.3 and first.max_tokens == 100
    assert first.messages[0] == {"role": "system", "content": "You work on test."}
    assert tools.calls == [("fs", "read", {"path": "a"})]
    assert (result.steps[0].rounds, result.steps[0].tool_calls) == (2, 1)


# --- events and secrets ---------------------------------------------------------------------


def test_events_come_in_order_with_their_step_ids() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: ask, mcp: [fs], prompt: go}
          - {id: direct, tool: fs.echo, with: {text: "{{ steps.ask.output }}"}}
          - {id: never, needs: direct, if: false, prompt: x}
        """
    )
    chat = ScriptedChat(call("echo", {"text": "hi"}), "answer")
    _, events = run(workflow, chat=chat, tools=FakeTools(fs={"echo": echo}))
    assert [(e.type, e.step) for e in events] == [
        ("step_started", "ask"),
        ("llm_request", "ask"),
        ("llm_response", "ask"),
        ("tool_call", "ask"),
        ("tool_result", "ask"),
        ("llm_request", "ask"),
        ("llm_response", "ask"),
        ("step_finished", "ask"),
        ("step_started", "direct"),
        ("tool_call", "direct"),
        ("tool_result", "direct"),
        ("step_finished", "direct"),
        ("step_finished", "never"),
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.data.get("round") for e in events if e.step == "ask"][1:-1] == [1, 1, 1, 1, 2, 2]
    assert events[0].data["kind"] == "agent" and events[8].data["kind"] == "tool"
    assert events[10].data["content"] == '{"text": "answer"}'


def test_secrets_read_through_env_are_masked_in_every_event() -> None:
    secret = "s3cr3t-t0ken-value"
    workflow = load(
        """
        mcp_servers:
          api: {command: api-server}
        steps:
          - {id: direct, tool: api.echo, with: {token: "{{ env.API_TOKEN }}"}}
          - {id: ask, prompt: "Use token {{ env.API_TOKEN }} and {{ steps.direct.output }}"}
        outputs:
          answer: "{{ steps.ask.output }}"
        """
    )
    chat = ScriptedChat(lambda request: ChatResponse(content=f"I used {secret}"))
    environ = {"API_TOKEN": secret, "OTHER": "not-read-by-any-template"}
    result, events = run(workflow, chat=chat, tools=FakeTools(api={"echo": echo}), environ=environ)
    assert secret in chat.requests[0].messages[-1]["content"]  # the model gets the real value
    assert result.outputs == {"answer": f"I used {secret}"}  # stdout shows what the model said
    logged = json.dumps([e.as_dict() for e in events])
    assert secret not in logged
    assert logged.count(MASK) >= 5  # tool call, tool result, prompt, answer, outputs
    assert "not-read-by-any-template" not in logged


# --- template values and failures -----------------------------------------------------------


def test_an_expression_that_raises_fails_the_step_instead_of_crashing_the_run() -> None:
    workflow = load(
        """
        inputs:
          zero: {type: integer, default: 0}
        steps:
          - {id: divide, prompt: "{{ 10 / inputs.zero }}"}
          - {id: after, needs: divide, prompt: "never asked"}
        """
    )
    result, events = run(workflow)
    assert statuses(result) == {"divide": "failed", "after": "skipped"}
    assert "ZeroDivisionError" in (result.steps[0].error or "")
    assert events[-1].type == "step_finished"  # the run's own end is told by runtime


def test_a_lone_expression_in_a_prompt_is_sent_as_json_text() -> None:
    workflow = load(
        """
        inputs:
          spec: {type: object, default: {modules: [a, b]}}
        steps:
          - {id: s, system: "{{ inputs.spec }}", prompt: "{{ inputs.spec }}"}
        """
    )
    chat = ScriptedChat("ok")
    run(workflow, chat=chat)
    system, user = chat.requests[0].messages[:2]
    assert json.loads(user["content"]) == {"modules": ["a", "b"]}
    assert system["content"] == user["content"]


def test_the_default_tool_choice_applies_only_to_steps_that_offer_tools() -> None:
    workflow = load(
        """
        mcp_servers:
          box: {command: box}
        steps:
          - {id: plain, prompt: "Say hi."}
          - {id: tooled, mcp: [box], prompt: "Use the tool."}
        """,
        defaults="{model: qwen/qwen3-4b, tool_choice: required}",
    )
    chat = ScriptedChat("hi", call("echo", {"x": 1}), "done")
    result, _ = run(workflow, chat=chat, tools=FakeTools(box={"echo": echo}))
    assert statuses(result) == {"plain": "succeeded", "tooled": "succeeded"}
    assert chat.requests[0].tool_choice is None
    assert chat.requests[1].tool_choice == "required"


def test_a_required_input_with_a_default_must_still_be_given() -> None:
    workflow = load(
        """
        inputs:
          top: {type: integer, default: 3, required: true}
        steps:
          - {id: s, prompt: "{{ inputs.top }}"}
        """
    )
    with pytest.raises(InputError, match="'top' is required"):
        coerce_inputs(workflow, {})
    assert coerce_inputs(workflow, {"top": "5"}) == {"top": 5}


def test_a_failure_skips_only_its_dependants_and_the_run_names_the_first_failure() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: tolerated, continue_on_error: true, tool: fs.read, with: {path: a}}
          - {id: first, tool: fs.read, with: {path: b}}
          - {id: second, tool: fs.read, with: {path: c}}
          - {id: other, prompt: independent}
          - {id: after, prompt: "{{ steps.first.output }}"}
        """
    )
    chat = ScriptedChat("fine")
    result, _ = run(workflow, chat=chat, tools=FakeTools(fs={"read": broken}))
    assert statuses(result) == {
        "tolerated": "failed",
        "first": "failed",
        "second": "failed",
        "other": "succeeded",
        "after": "skipped",
    }
    assert [s.id for s in result.steps] == ["tolerated", "first", "second", "other", "after"]
    assert (
        result.error == "step 'first' failed: tool fs.read failed: permission denied: /etc/shadow"
    )


# --- hostile inputs (issue 8): refused with a message, never a traceback ------------------------


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("ratio", "nan", "'nan' is not a number"),
        ("ratio", "inf", "'inf' is not a number"),
        ("ratio", "1e999", "1e999 is too large for a number"),
        ("count", "1_0", "'1_0' is not an integer"),
        ("count", "٣", "'٣' is not an integer"),
        ("ratio", "٣.5", "'٣.5' is not a number"),
        ("count", "+3", "'+3' is not an integer"),
        ("names", "[NaN]", "NaN is not a number JSON can carry"),
        ("names", "[1e999]", "1e999 is too large for a number"),
        ("names", "[" * 1000 + "]" * 1000, "nesting is deeper than 64 levels"),
        ("names", "[" * 70 + "]" * 70, "nesting is deeper than 64 levels"),
    ],
)
def test_numbers_are_parsed_strictly_and_deep_json_is_refused(
    name: str, raw: str, message: str
) -> None:
    workflow = load(TYPED_INPUTS)
    given = {"text": "t", "count": "1", "ratio": "1", "flag": "no", "names": "[]", "options": "{}"}
    with pytest.raises(InputError) as caught:
        coerce_inputs(workflow, {**given, name: raw})
    assert f"input {name!r}: " in caught.value.message
    assert message in caught.value.message


def test_nan_passes_no_minimum_or_maximum() -> None:
    workflow = load(
        """
        inputs:
          r: {type: number, minimum: 0, maximum: 1}
        steps:
          - {id: s, prompt: "{{ inputs.r }}"}
        """
    )
    for given in ("nan", float("nan"), float("inf")):
        with pytest.raises(InputError, match="input 'r'"):
            coerce_inputs(workflow, {"r": given})


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (ALIAS_BOMB, ":1:56:", "document expands to more than 200,000 nodes"),
        (ALIAS_LOOP, ":1:4:", "an alias (*name) is used inside the value its anchor"),
        ("names: " + nested_list(900) + "\n", ":1:71:", "YAML nesting is deeper than 64 levels"),
        (nested_block_yaml(900), ":65:", "YAML nesting is deeper than 64 levels"),
        ("text: a\ntext: b\n", ":2:1:", "duplicate key 'text'"),
        ("ratio: .nan\n", ":1:8:", "'.nan' is not a finite number"),
        ("names: [a\n", ":1:8:", "YAML syntax"),
    ],
)
def test_an_inputs_file_goes_through_the_workflow_loader_and_its_limits(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    file = tmp_path / "inputs.yaml"
    file.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        read_inputs(file, [])
    assert caught.value.exit_code == EXIT_INVALID
    assert caught.value.message.startswith(f"{file}{where}")
    assert message in caught.value.message


def test_a_date_in_an_inputs_file_stays_the_text_it_is(tmp_path: Path) -> None:
    workflow = load(
        """
        inputs:
          day: {type: string}
        steps:
          - {id: s, prompt: "{{ inputs.day }}"}
        """
    )
    file = tmp_path / "inputs.yaml"
    file.write_text("day: 2024-01-02\n")
    assert coerce_inputs(workflow, read_inputs(file, [])) == {"day": "2024-01-02"}


def test_an_empty_inputs_file_gives_no_inputs(tmp_path: Path) -> None:
    file = tmp_path / "inputs.yaml"
    file.write_text("# nothing yet\n")
    assert read_inputs(file, ["a=1"]) == {"a": "1"}


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("{{ range(3) }}", "with.text is a range value, which is not JSON data"),
        ("{{ [1, range(2)] }}", "with.text[1] is a range value"),
        ("{{ {'a': lipsum} }}", "with.text.a is a function value"),
        ("{{ inputs.word | float }}", "with.text is inf, which is not JSON data"),
    ],
)
def test_a_tool_argument_that_is_not_json_fails_the_step_with_a_message(
    argument: str, message: str
) -> None:
    workflow = load(
        f"""
        inputs:
          word: {{type: string, default: inf}}
        mcp_servers:
          fs: {{command: fs-server}}
        steps:
          - id: call
            tool: fs.list
            with: {{text: "{argument}"}}
          - {{id: after, needs: [call], prompt: never asked}}
        """
    )
    tools = FakeTools(fs={"list": echo})
    result, events = run(workflow, tools=tools)
    assert statuses(result) == {"call": "failed", "after": "skipped"}
    assert message in (result.steps[0].error or "")
    assert tools.calls == []
    assert finished(events)["call"]["status"] == "failed"
    assert not [e for e in events if e.type == "tool_call"]


def test_ranges_made_lists_in_the_template_reach_the_tool_as_json() -> None:
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - {id: call, tool: fs.list, with: {items: "{{ range(3) | list }}"}}
        """
    )
    tools = FakeTools(fs={"list": echo})
    result, _ = run(workflow, tools=tools)
    assert tools.calls == [("fs", "list", {"items": [0, 1, 2]})]
    assert statuses(result) == {"call": "succeeded"}


def test_an_unset_variable_in_server_settings_names_server_field_and_variable() -> None:
    workflow = load(
        """
        mcp_servers:
          gh: {command: gh-server, env: {TOKEN: "{{ env.GITHUB_TOKEN }}"}}
          web: {url: "http://127.0.0.1:9/mcp", headers: {X-Depth: "{{ 1 / 0 }}"}}
        steps:
          - {id: s, mcp: [gh, web], prompt: x}
        """
    )
    log = RunLog("run-1")
    context = base_context(workflow, {}, SecretEnv((), log.redactor, {}), "run-1", None, "now")
    with pytest.raises(MCPServerError) as unset:
        render_servers(workflow, ["gh"], context)
    assert unset.value.exit_code == EXIT_ENVIRONMENT
    assert unset.value.message == (
        "MCP server 'gh' setting env.TOKEN reads environment variable GITHUB_TOKEN, "
        "which is not set"
    )
    assert unset.value.hint == "set it before the run: export GITHUB_TOKEN=..."
    with pytest.raises(ConfigurationError) as broken:
        render_servers(workflow, ["web"], context)
    assert broken.value.exit_code == EXIT_INVALID
    assert "MCP server 'web' setting headers.X-Depth: " in broken.value.message
    assert "ZeroDivisionError" in broken.value.message
    context["env"] = SecretEnv(["GITHUB_TOKEN"], log.redactor, {"GITHUB_TOKEN": "s3cret"})
    assert render_servers(workflow, ["gh"], context)["gh"].env == {"TOKEN": "s3cret"}


def test_a_template_that_recurses_while_rendering_fails_its_step_with_a_message() -> None:
    workflow = load(
        """
        steps:
          - {id: loop, prompt: "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"}
          - {id: after, needs: [loop], prompt: never asked}
        """
    )
    result, events = run(workflow, chat=ScriptedChat())
    assert statuses(result) == {"loop": "failed", "after": "skipped"}
    assert "rendering recursed too deeply (a macro that calls itself" in (
        result.steps[0].error or ""
    )
    assert finished(events)["loop"]["status"] == "failed"


def test_a_failed_agent_step_and_a_failed_item_record_what_they_spent() -> None:
    """Issue 10: a step that ran out of rounds said rounds 0, tool_calls 0, usage 0."""
    workflow = load(
        """
        mcp_servers:
          fs: {command: fs-server}
        steps:
          - id: each
            for_each: "{{ [1, 2] }}"
            concurrency: 1
            mcp: [fs]
            max_rounds: 2
            continue_on_error: true
            prompt: "Look at {{ item }}"
        """
    )
    spend = Usage(10, 2)
    chat = ScriptedChat(
        replace(call("echo", {"n": 1}), usage=spend),
        replace(ChatResponse(content="one", finish_reason="stop"), usage=spend),
        replace(call("echo", {"n": 2}), usage=spend),
        replace(call("echo", {"n": 3}), usage=spend),  # round 2 of 2: no tools, no answer
    )
    result, events = run(workflow, chat=chat, tools=FakeTools(fs={"echo": echo}))

    [step] = result.steps
    assert step.error is not None and "no final answer after 2 rounds" in step.error
    assert (step.rounds, step.tool_calls, step.usage) == (4, 3, Usage(40, 8))
    data = finished(events)["each"]
    assert (data["rounds"], data["tool_calls"], data["usage"]) == (
        4,
        3,
        {"prompt_tokens": 40, "completion_tokens": 8},
    )
