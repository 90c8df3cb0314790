"""Reusable agents (`agents:` and `agent: NAME`): resolved when the typed Workflow is built,
so validation places inherited settings at the agent, and a run, its fingerprints and its
requests see one merged step."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from fakes.lmstudio import FakeLMStudio
from test_run_cli import lmflow

from runner.spec import check_file
from runner.spec.model import AgentStep

AGENTS = """\
version: 1
defaults: {model: qwen/qwen3-coder-30b}
agents:
  reviewer:
    model: mistralai/magistral-small-2509
    system: "You review {{ inputs.language }} code."
    temperature: 0.2
    max_tokens: 300
steps:
  - id: first
    agent: reviewer
    prompt: "review {{ inputs.file }}"
  - id: second
    agent: reviewer
    system: "You only count lines."
    temperature: 0.9
    prompt: "count {{ steps.first.output }}"
inputs:
  language: {type: string, default: Python}
  file: {type: string, default: a.py}
outputs:
  second: "{{ steps.second.output }}"
"""


def write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[tuple[int, int, str, str]]:
    _, problems = check_file(path)
    return [(p.line, p.col, p.rule, p.message) for p in problems]


def test_a_step_takes_its_agents_settings_and_its_own_keys_override_them(tmp_path: Path) -> None:
    workflow, problems = check_file(write(tmp_path, AGENTS))
    assert workflow is not None, problems
    first, second = workflow.steps
    assert isinstance(first, AgentStep) and isinstance(second, AgentStep)
    assert (first.model, first.system, first.temperature, first.max_tokens) == (
        "mistralai/magistral-small-2509",
        "You review {{ inputs.language }} code.",
        0.2,
        300,
    )
    assert (second.system, second.temperature, second.max_tokens) == (
        "You only count lines.",
        0.9,
        300,
    )
    # the agent's system prompt reads an input: the plan knows, as for a step's own field
    refs = {r.path for f in workflow.plan.steps[0].fields for r in f.refs if r.root == "inputs"}
    assert refs == {("language",), ("file",)}


def test_a_run_sends_the_merged_model_system_and_settings(tmp_path: Path) -> None:
    path = write(tmp_path, AGENTS)
    with FakeLMStudio() as lm:
        run = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--json")
        assert run.code == 0, run.stderr
        first, second = lm.chat_requests
    assert first["model"] == second["model"] == "mistralai/magistral-small-2509"
    assert first["messages"][0] == {"role": "system", "content": "You review Python code."}
    assert (first["temperature"], first["max_tokens"]) == (0.2, 300)
    assert second["messages"][0] == {"role": "system", "content": "You only count lines."}
    assert (second["temperature"], second["max_tokens"]) == (0.9, 300)
    assert json.loads(run.stdout)["outputs"]["second"].startswith("echo: count ")


def test_a_changed_agent_reruns_the_steps_that_use_it_on_resume(tmp_path: Path) -> None:
    path = write(tmp_path, AGENTS)
    with FakeLMStudio() as lm:
        assert lmflow(tmp_path, "run", path.name, "--base-url", lm.url).code == 0
        path.write_text(AGENTS.replace("max_tokens: 300", "max_tokens: 400"))
        again = lmflow(tmp_path, "run", path.name, "--base-url", lm.url, "--resume", "last")
        assert again.code == 0, again.stderr
        assert [r["max_tokens"] for r in lm.chat_requests] == [300, 300, 400, 400]


def test_an_unknown_agent_gets_did_you_mean_at_its_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        AGENTS.replace(
            'agent: reviewer\n    prompt: "review', 'agent: reviewr\n    prompt: "review'
        ),
    )
    workflow, problems = check_file(path)
    assert workflow is None
    (problem,) = problems
    assert (problem.path, problem.line, problem.col, problem.rule) == (
        str(path),
        11,
        12,
        "unknown-agent",
    )
    assert problem.message == "step 'first' names agent 'reviewr', which is not declared"
    assert problem.hint == "did you mean 'reviewer'?"


def test_an_agents_undeclared_server_is_reported_once_at_the_agent(tmp_path: Path) -> None:
    path = write(tmp_path, AGENTS.replace("max_tokens: 300", "max_tokens: 300\n    mcp: [fs]"))
    assert problems_of(path) == [
        (9, 11, "unknown-server", "agent 'reviewer' uses MCP server 'fs', which is not declared")
    ]


def test_references_in_an_agents_system_are_checked_at_the_agent(tmp_path: Path) -> None:
    path = write(tmp_path, AGENTS.replace("inputs.language", "inputs.lang"))
    # at the agent, where the fix goes, not at the step that inherits it
    assert problems_of(path) == [
        (6, 28, "unknown-input", "agent 'reviewer' key 'system' reads undeclared input 'lang'")
    ]


def test_an_agent_on_a_tool_or_command_step_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        agents: {helper: {system: be brief}}
        steps:
          - id: tests
            run: [pytest, -q]
            agent: helper
        """,
    )
    _, problems = check_file(path)
    (problem,) = problems
    assert (problem.line, problem.col) == (6, 5)
    assert problem.hint is not None and "remove `agent:`" in problem.hint
    assert "`run:` step has no model" in problem.hint
