"""`tool:` steps checked against their servers' tool lists before the first step runs: in
`lmflow run` (exit 3, no model request) and `lmflow validate --servers` (servers stopped)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fakes.lmstudio import FakeLMStudio
from mcp_support import wait_until_gone
from test_run_cli import Make, assert_clean, fixture, lmflow, workflow

from runner.spec import load_workflow
from runner.toolcheck import check_tool_steps, describe_arguments

ECHO = SimpleNamespace(
    name="echo",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string"}, "times": {"type": "integer"}},
        "required": ["text"],
    },
)
ADD = SimpleNamespace(
    name="add",
    input_schema={
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
)


def problems_of(tmp_path: Path, steps: str, context: dict[str, Any] | None = None) -> list[str]:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nname: t\ninputs:\n  n: {type: integer, default: 2}\n"
        "mcp_servers:\n  fx: {command: x}\nsteps:\n" + textwrap.indent(textwrap.dedent(steps), "  ")
    )
    found = check_tool_steps(load_workflow(path), lambda server: [ECHO, ADD], context)
    return [f"{p.line}:{p.col} {p.rule} {p.message} | {p.hint}" for p in found]


def test_an_unknown_tool_gets_a_did_you_mean_at_its_line(tmp_path: Path) -> None:
    (found,) = problems_of(tmp_path, "  - id: a\n    tool: fx.ecko\n    with: {text: hi}\n")
    assert found.startswith("9:5 tool-not-found step 'a': MCP server 'fx' has no tool 'ecko'")
    assert "did you mean fx.echo?" in found
    assert found.endswith("| tools of 'fx': add, echo")


def test_missing_unknown_and_mistyped_literal_arguments(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """\
          - id: a
            tool: fx.echo
            with:
              txt: hi
              times: many
        """,
    )
    assert found == [
        "10:5 tool-argument-missing step 'a': tool 'fx.echo' needs argument(s) 'text'"
        " | add them under `with:`; fx.echo takes (text: string, times?: integer)",
        "11:7 tool-argument-unknown step 'a': tool 'fx.echo' takes no argument 'txt';"
        " did you mean 'text'? | fx.echo takes (text: string, times?: integer)",
        "12:7 tool-argument-type step 'a': argument 'times' of tool 'fx.echo': 'many' is not"
        " of type 'integer' | fx.echo takes (text: string, times?: integer)",
    ]


def test_a_tool_without_arguments_takes_none(tmp_path: Path) -> None:
    crash = SimpleNamespace(name="crash", input_schema={"type": "object", "properties": {}})
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nname: t\nmcp_servers:\n  fx: {command: x}\nsteps:\n"
        "  - {id: a, tool: fx.crash, with: {now: true}}\n"
    )
    [found] = check_tool_steps(load_workflow(path), lambda server: [crash])
    assert (found.line, found.col, found.rule) == (6, 36, "tool-argument-unknown")
    assert found.hint == "fx.crash takes (no arguments)"


def test_templates_are_checked_once_rendered_or_skipped_when_not_knowable(
    tmp_path: Path,
) -> None:
    steps = """\
      - {id: a, tool: fx.add, with: {a: "{{ inputs.n }}", b: "{{ inputs.n | string }}x"}}
      - {id: b, tool: fx.add, needs: a, with: {a: "{{ steps.a.output }}", b: "{{ env.B }}"}}
    """
    rendered = problems_of(tmp_path, steps, {"inputs": {"n": 2}, "env": {"B": "secret"}})
    assert len(rendered) == 1
    assert "argument 'b' of tool 'fx.add': '2x' is not of type 'number'" in rendered[0]
    assert "secret" not in rendered[0]
    # Without a context (validate without inputs) no template is rendered: nothing to say.
    assert problems_of(tmp_path, steps) == []


def test_describe_arguments_marks_optional_ones() -> None:
    assert describe_arguments(ECHO.input_schema) == "text: string, times?: integer"
    assert describe_arguments({"properties": {"p": {"anyOf": [{"type": "string"}]}}}) == (
        "p?: string"
    )


BAD_TOOL_STEPS = """
mcp_servers:
  fx: {server}
steps:
  - {{id: first, tool: fx.ech, with: {{text: hi}}}}
  - id: second
    tool: fx.add
    with: {{a: 1, bb: 2}}
  - {{id: ask, mcp: [fx], prompt: never asked}}
"""


def test_a_run_with_bad_tool_steps_stops_before_any_step_with_exit_3(
    tmp_path: Path, make_fake_lmstudio: Make, process_tag: str
) -> None:
    lm: FakeLMStudio = make_fake_lmstudio(script=["never"])
    file = workflow(tmp_path, BAD_TOOL_STEPS.format(server=fixture(process_tag)))
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=process_tag)
    assert run.code == 3, run.stderr
    assert_clean(run)
    assert lm.chat_requests == []  # no model request was sent
    assert f"{file}:8:17: error: step 'first': MCP server 'fx' has no tool 'ech'" in run.stderr
    assert "did you mean fx.echo?" in run.stderr
    assert f"{file}:11:18: error: step 'second': tool 'fx.add' takes no argument 'bb'" in (
        run.stderr
    )
    assert "needs argument(s) 'b'" in run.stderr
    assert f"hint: `lmflow tools {file}` lists each tool with its arguments" in run.stderr
    assert "validation error" not in run.stderr  # never the server's pydantic dump
    assert not [e for e in run.events() if e["type"] == "step_started"]


def test_validate_servers_checks_tool_steps_and_stops_the_servers(
    tmp_path: Path, process_tag: str
) -> None:
    file = workflow(tmp_path, BAD_TOOL_STEPS.format(server=fixture(process_tag)))
    offline = lmflow(tmp_path, "validate", "--offline", file, tag=process_tag)
    assert offline.code == 0, offline.stdout + offline.stderr  # the file alone is sound
    run = lmflow(tmp_path, "validate", "--offline", "--servers", file, tag=process_tag)
    assert run.code == 3, run.stderr
    assert_clean(run)
    assert f"{file}:8:17: error: step 'first'" in run.stdout
    assert "[tool-argument-unknown]" in run.stdout
    assert "1 file(s) checked: 0 without errors, 1 with errors (3 error(s)" in run.stderr
    assert wait_until_gone(process_tag) == []  # every server process is gone
    assert not (tmp_path / ".lmflow").exists()

    good = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(process_tag)}
        steps:
          - {{id: first, tool: fx.echo, with: {{text: hi}}}}
        """,
        name="good.yaml",
    )
    ok = lmflow(tmp_path, "validate", "--offline", "--servers", good, tag=process_tag)
    assert ok.code == 0, ok.stdout + ok.stderr
    assert wait_until_gone(process_tag) == []


def test_validate_servers_renders_with_templates_from_the_given_inputs(
    tmp_path: Path, process_tag: str
) -> None:
    file = workflow(
        tmp_path,
        f"""
        inputs:
          word: {{type: string}}
        mcp_servers:
          fx: {fixture(process_tag)}
        steps:
          - {{id: first, tool: fx.add, with: {{a: "{{{{ inputs.word }}}}", b: 1}}}}
        """,
    )
    run = lmflow(
        tmp_path, "validate", "--offline", "--servers", file, "-i", "word=abc", tag=process_tag
    )
    assert run.code == 3, run.stdout + run.stderr
    assert "argument 'a' of tool 'fx.add': 'abc' is not of type 'number'" in run.stdout


def test_a_value_known_only_during_the_run_that_does_not_fit_fails_in_one_line(
    tmp_path: Path, make_fake_lmstudio: Make, process_tag: str
) -> None:
    lm = make_fake_lmstudio(script=[])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(process_tag)}
        steps:
          - {{id: first, tool: fx.echo, with: {{text: hello}}}}
          - {{id: second, tool: fx.add, with: {{a: "{{{{ steps.first.output.result }}}}", b: 1}}}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=process_tag)
    assert run.code == 1, run.stderr
    assert_clean(run)
    assert (
        "✗ second failed: tool fx.add failed: argument 'a': 'hello' is not of type 'number' "
        "(it takes a: number, b: number)"
    ) in run.stderr
    assert "validation error" not in run.stderr and "pydantic" not in run.stderr
