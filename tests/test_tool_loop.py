"""The agent loop's guards against small models, end to end through `lmflow run` and
`lmflow agent`: a model stuck on one call, calls written as text, broken argument JSON, and
what a failed step says it spent. LM Studio is the loopback fake; the MCP server is our SDK
fixture server, a real process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import stuck_on
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE
from test_run_cli import (
    MODEL,
    Make,
    Run,
    assert_clean,
    fixture,
    lmflow,
    offered,
    tool_messages,
    workflow,
)
from test_run_cli import tag as tag  # the fixture: no process outlives a test

ECHO_STEP = """
mcp_servers:
  fx: {server}
steps:
  - {{id: ask, mcp: [fx], tools: [echo], {settings}prompt: "Echo tick."}}
outputs:
  answer: "{{{{ steps.ask.output }}}}"
"""


def echo_workflow(tmp_path: Path, tag: str, settings: str = "") -> str:
    return workflow(tmp_path, ECHO_STEP.format(server=fixture(tag), settings=settings))


def events_of(run: Run, kind: str) -> list[dict[str, Any]]:
    return [e for e in run.events() if e["type"] == kind]


def spent_by_responses(run: Run) -> dict[str, int]:
    """The tokens of every model response of the run, added up."""
    total = {"prompt_tokens": 0, "completion_tokens": 0}
    for event in events_of(run, "llm_response"):
        for key in total:
            total[key] += event["usage"][key]
    return total


# --- no endless tool loops ------------------------------------------------------------------


def test_a_model_stuck_on_one_call_is_stopped_and_answers(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    """Gemma 3 270M (issue 10): `tool_choice` forces a tool, and the model calls it with the
    same arguments every round it is offered tools."""
    lm = make_fake_lmstudio(script=[stuck_on("echo", {"text": "tick"}, "It said tick.")] * 3)
    file = echo_workflow(tmp_path, tag, "tool_choice: echo, max_rounds: 3, ")
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)

    assert run.code == 0, run.stderr
    assert run.stdout == "It said tick.\n"
    first, second, last = lm.chat_requests
    assert first["tool_choice"] == {"type": "function", "function": {"name": "echo"}}
    assert (second["tool_choice"], offered(second)) == ("auto", ["echo"])
    assert "tool_choice" not in last and offered(last) == []
    repeat = tool_messages(last)[-1]["content"]
    assert repeat.startswith("tick\n\n[note: you already called echo with these arguments")
    assert last["messages"][-1]["content"].startswith("This is your last turn")
    assert [e["params"]["tool_choice"] for e in events_of(run, "llm_request")] == [
        {"type": "function", "function": {"name": "echo"}},
        "auto",
        None,
    ]
    assert [e["kind"] for e in events_of(run, "agent_notice")] == ["repeated_call", "last_round"]
    [finished] = events_of(run, "step_finished")
    assert (finished["rounds"], finished["tool_calls"]) == (3, 2)
    assert finished["usage"] == spent_by_responses(run)
    assert "note: repeated_call" in run.stderr


# --- honest accounting ----------------------------------------------------------------------


def test_a_step_that_runs_out_of_rounds_records_what_it_spent(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("echo", {"text": word})] for word in ("a", "b", "c")])
    file = echo_workflow(tmp_path, tag, "max_rounds: 3, ")
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, "--json", tag=tag)

    assert run.code == 1, run.stderr
    [step] = json.loads(run.stdout)["steps"]
    assert step["error"] == (
        "no final answer after 3 rounds: in round 3, the last, the model still called echo "
        "although no tools were offered"
    )
    spent = spent_by_responses(run)
    assert spent["prompt_tokens"] > 0 and spent["completion_tokens"] == 3
    assert (step["rounds"], step["tool_calls"], step["usage"]) == (3, 3, spent)
    [finished] = events_of(run, "step_finished")
    assert (finished["rounds"], finished["tool_calls"], finished["usage"]) == (3, 3, spent)
    assert run.result()["usage"] == spent
    assert_clean(run)


# --- tool calls the server did not parse ----------------------------------------------------


@pytest.mark.parametrize(
    ("form", "written"),
    [("hermes", "<tool_call>"), ("lmstudio", "[TOOL_REQUEST]"), ("json", "JSON object")],
)
def test_tool_calls_written_as_text_are_recovered(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str, form: str, written: str
) -> None:
    lm = make_fake_lmstudio(
        script=[[("echo", {"text": "pong"})], "The echo said pong."], calls_as_text=form
    )
    run = lmflow(tmp_path, "run", echo_workflow(tmp_path, tag), "--base-url", lm.url, tag=tag)

    assert run.code == 0, run.stderr
    assert run.stdout == "The echo said pong.\n"
    assert tool_messages(lm.chat_requests[1]) == [
        {"role": "tool", "tool_call_id": "recovered_1_1", "content": "pong"}
    ]
    [notice] = events_of(run, "agent_notice")
    assert notice["kind"] == "recovered_tool_call"
    assert f"written as {written} text: echo" in notice["detail"]
    [call] = events_of(run, "tool_call")
    assert (call["name"], call["arguments"]) == ("echo", {"text": "pong"})


@pytest.mark.parametrize("form", [None, "hermes"], ids=["tool-call", "written"])
def test_broken_argument_json_is_repaired_without_spending_a_round(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str, form: str | None
) -> None:
    lm = make_fake_lmstudio(
        script=[[("echo", '{"text": "pong",')], "The echo said pong."], calls_as_text=form
    )
    run = lmflow(tmp_path, "run", echo_workflow(tmp_path, tag), "--base-url", lm.url, tag=tag)

    assert run.code == 0, run.stderr
    assert len(lm.chat_requests) == 2
    assert tool_messages(lm.chat_requests[1])[0]["content"] == "pong"
    [finished] = events_of(run, "step_finished")
    assert finished["rounds"] == 2


# --- lmflow agent's flags -------------------------------------------------------------------


def agent(tmp_path: Path, lm_url: str, tag: str, *args: str) -> Run:
    inline = f"fx=env {TAG_VARIABLE}={tag} {sys.executable} {FIXTURE_SERVER}"
    return lmflow(
        tmp_path,
        "agent",
        "--server",
        inline,
        "--model",
        MODEL,
        "--base-url",
        lm_url,
        *args,
        tag=tag,
    )


def test_agent_takes_tool_choice_temperature_max_tokens_and_max_rounds(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("echo", {"text": "pong"})], "pong it is"])
    run = agent(
        tmp_path,
        lm.url,
        tag,
        "--tool-choice",
        "echo",
        "--temperature",
        "0.3",
        "--max-tokens",
        "64",
        "--max-rounds",
        "2",
        "Echo pong.",
    )

    assert run.code == 0, run.stderr
    assert run.stdout == "pong it is\n"
    first, last = lm.chat_requests
    assert first["tool_choice"] == {"type": "function", "function": {"name": "echo"}}
    assert (first["temperature"], first["max_tokens"]) == (0.3, 64)
    assert (last["temperature"], last["max_tokens"]) == (0.3, 64)
    assert offered(last) == []  # round 2 of 2 is the last: no tools


def test_agent_output_schema_constrains_and_parses_the_answer(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    (tmp_path / "city.json").write_text(json.dumps(schema))
    lm = make_fake_lmstudio(script=['{"city": 7}', '{"city": "Lisbon"}'])
    run = lmflow(
        tmp_path,
        "agent",
        "--model",
        MODEL,
        "--base-url",
        lm.url,
        "--output-schema",
        "city.json",
        "Where?",
    )

    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {"city": "Lisbon"}
    assert lm.chat_requests[0]["response_format"]["json_schema"]["schema"] == schema


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "city.json:1:1: cannot read file"),
        ('{"type": "object",\n  "properties": {\n', "city.json:3:1"),
        ('["a list"]', "city.json: --output-schema must hold a JSON Schema object, not list"),
        (
            '{"type": "object",\n "properties": {"city": {"type": "town"}}}',
            "city.json:2:34: not a valid JSON Schema: 'town' is not valid",
        ),
    ],
    ids=["missing", "not-json", "not-an-object", "not-a-schema"],
)
def test_a_bad_output_schema_file_exits_2_saying_where(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    if content is not None:
        (tmp_path / "city.json").write_text(content)
    run = lmflow(tmp_path, "agent", "--model", MODEL, "--output-schema", "city.json", "Where?")
    assert run.code == 2, run.stderr
    assert expected in run.stderr
    assert "\n  hint: " in run.stderr
    assert_clean(run)


def test_agent_forcing_a_tool_without_servers_exits_2(tmp_path: Path) -> None:
    run = lmflow(tmp_path, "agent", "--model", MODEL, "--tool-choice", "required", "Hi")
    assert run.code == 2
    assert "--tool-choice required forces a tool call, but no tools are offered" in run.stderr
    assert "hint: name a server with --mcp" in run.stderr
    assert_clean(run)
