"""Step prompts from MCP server prompts (`prompt_from:`, `system_from:`): fetched from a real
fixture server process when the step runs, recorded in the cassette and replayed with no
server; checked offline (shape, server) and by `validate --servers` (name, arguments)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, fixture_server, new_tag, wait_until_gone
from test_replay import run

from runner.errors import ToolStepsInvalidError
from runner.mcp import McpSessions
from runner.runtime import dry_run_workflow
from runner.server_prompts import PROMPT_GETTER
from runner.spec import load_workflow

MODEL = "qwen/qwen3-4b"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def server_entry(*args: str, tag: str | None = None) -> str:
    """The fixture server as a `mcp_servers:` entry, its processes marked with `tag`."""
    env = {"env": {TAG_VARIABLE: tag}} if tag is not None else {}
    return json.dumps({"command": sys.executable, "args": [str(FIXTURE_SERVER), *args], **env})


def head(server: str) -> str:
    """A workflow's lines before its steps (5 lines), with the server `fx`."""
    return f"version: 1\ndefaults: {{model: {MODEL}}}\nmcp_servers:\n  fx: {server}\nsteps:\n"


WORKFLOW = f"""\
version: 1
name: server-prompts
defaults: {{model: {MODEL}}}
inputs:
  path: {{type: string, default: src/app.py}}
mcp_servers:
  fx: {server_entry("--prompts")}
steps:
  - id: review
    system_from: {{server: fx, name: persona, arguments: {{tone: strict}}}}
    prompt_from:
      server: fx
      name: review
      arguments: {{path: "{{{{ inputs.path }}}}", focus: races}}
  - id: look
    needs: [review]
    prompt_from: {{server: fx, name: picture_prompt}}
outputs:
  review: "{{{{ steps.review.output }}}}"
  look: "{{{{ steps.look.output }}}}"
"""


@pytest.fixture
def workflow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "prompts.yaml"
    path.write_text(WORKFLOW)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TAG_VARIABLE, new_tag())  # the servers inherit it: leaks are findable
    return path


def test_server_prompts_become_the_steps_messages_and_replay_without_the_server(
    workflow_file: Path,
) -> None:
    cassette = workflow_file.parent / "prompts.cassette.yaml"
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=["ok", "a pixel"]) as lm:
        _, _, result = run(workflow_file, base_url=lm.url, record=cassette)
        requests = lm.chat_requests
    assert result.status == "succeeded", result.as_dict()
    assert requests[0]["messages"] == [
        {"role": "system", "content": "You are a strict reviewer."},
        {"role": "user", "content": "You review code for a living."},
        {"role": "assistant", "content": "Understood: send me what to review."},
        {"role": "user", "content": "Review src/app.py, looking for races."},
    ]
    image, resource, question = requests[1]["messages"]
    # An image is saved in the run directory and named, as in tool results.
    assert image["role"] == "user"
    assert image["content"].startswith("[image content: image/png, saved to ")
    saved = Path(image["content"].split("saved to ", 1)[1].rstrip("]"))
    assert saved.read_bytes().startswith(b"\x89PNG")
    assert resource == {"role": "user", "content": "context from a resource"}
    assert question == {"role": "user", "content": "What does the picture show?"}
    assert wait_until_gone(os.environ[TAG_VARIABLE]) == []

    # A server that cannot start proves the replay fetches nothing from one.
    workflow_file.write_text(WORKFLOW.replace(sys.executable, "/nonexistent/python"))
    _, events, replayed = run(workflow_file, replay=cassette)
    assert replayed.status == "succeeded", replayed.as_dict()
    assert replayed.outputs == {"review": "ok", "look": "a pixel"}
    first = next(e for e in events if e["type"] == "llm_request")
    assert first["messages"][-1]["content"] == "Review src/app.py, looking for races."


def test_a_prompt_that_ends_with_the_assistant_fails_the_step_clearly(
    workflow_file: Path,
) -> None:
    workflow_file.write_text(
        WORKFLOW.split("steps:")[0]
        + "steps:\n  - id: hello\n    prompt_from: {server: fx, name: prefill}\n"
    )
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=[]) as lm:
        _, _, result = run(workflow_file, base_url=lm.url)
        assert lm.chat_requests == []
    (step,) = result.steps
    assert step.status == "failed"
    assert step.error == (
        "prompt 'prefill' of MCP server 'fx' ends with an assistant message; a step's "
        "conversation ends with the user's"
    )


def test_a_run_checks_its_server_prompts_before_the_first_step(workflow_file: Path) -> None:
    workflow_file.write_text(
        WORKFLOW.split("steps:")[0]
        + "steps:\n  - id: odd\n    prompt_from: {server: fx, name: no_such_prompt}\n"
    )
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=[]) as lm:
        with pytest.raises(ToolStepsInvalidError) as raised:
            run(workflow_file, base_url=lm.url)
        assert lm.chat_requests == []
    (problem,) = raised.value.problems
    assert (problem.line, problem.rule) == (10, "prompt-not-found")


@pytest.mark.anyio
async def test_a_prompt_the_server_refuses_is_an_error_result_with_its_reason(
    tmp_path: Path,
) -> None:
    tag = new_tag()
    server = fixture_server("fx", "--prompts", tag=tag)
    async with McpSessions({"fx": server}, log_dir=tmp_path) as sessions:
        refused = await sessions.call_tool("fx", PROMPT_GETTER, {"name": "nope", "arguments": {}})
        fetched = await sessions.call_tool(
            "fx", PROMPT_GETTER, {"name": "persona", "arguments": {"tone": "calm"}}
        )
        listed = {p.name: p for p in await sessions.prompts("fx")}
    assert wait_until_gone(tag) == []
    assert refused.is_error
    assert refused.text.startswith("prompt 'nope' of MCP server 'fx' failed: ")
    assert fetched.structured == {
        "messages": [{"role": "user", "content": "You are a calm reviewer."}]
    }
    assert [(a.name, a.required) for a in listed["review"].arguments or ()] == [
        ("path", True),
        ("focus", False),
    ]


def test_offline_validation_checks_the_shape_and_the_server(
    tmp_path: Path, lmflow_cli: Callable[..., Any]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        head(server_entry("--prompts"))
        + """\
  - id: a
    prompt: hello
    prompt_from: {server: fx, name: review}
  - id: b
    system_from: {server: fz, name: persona}
    prompt: hi
  - id: c
    prompt_from: {server: fx}
"""
    )
    done = lmflow_cli("validate", "--offline", "--format", "json", str(path))
    assert done.exit_code == 2
    problems = json.loads(done.stdout)["files"][0]["problems"]
    found = [(p["line"], p["rule"]) for p in problems]
    assert found == [(8, "text-and-server-prompt"), (10, "unknown-server"), (13, "missing-key")]
    assert problems[1]["hint"] == "declared servers: fx"


def test_validate_servers_checks_prompt_names_and_arguments(
    tmp_path: Path, lmflow_cli: Callable[..., Any]
) -> None:
    tag = new_tag()
    path = tmp_path / "servers.yaml"
    path.write_text(
        head(server_entry("--prompts", tag=tag))
        + """\
  - id: a
    prompt_from: {server: fx, name: reveiw, arguments: {path: x}}
  - id: b
    prompt_from: {server: fx, name: review, arguments: {focus: y}}
  - id: c
    system_from: {server: fx, name: persona, arguments: {tone: calm, mood: odd}}
    prompt: hi
  - id: d
    prompt_from: {server: fx, name: review, arguments: {path: ok}}
"""
    )
    done = lmflow_cli("validate", "--offline", "--servers", "--format", "json", str(path))
    assert wait_until_gone(tag) == []
    assert done.exit_code == 3
    problems = json.loads(done.stdout)["files"][0]["problems"]
    found = [(p["line"], p["rule"]) for p in problems]
    assert found == [
        (7, "prompt-not-found"),
        (9, "prompt-argument-missing"),
        (11, "prompt-argument-unknown"),
    ]
    assert "did you mean 'review'?" in problems[0]["message"]
    assert problems[1]["message"] == "step 'b': prompt 'review' of 'fx' needs argument(s) 'path'"
    assert problems[1]["hint"] == (
        "add them under `prompt_from: {arguments: ...}`; it takes (path, focus?)"
    )


def test_dry_run_names_the_prompt_and_an_agents_system_gives_way(workflow_file: Path) -> None:
    workflow_file.write_text(
        WORKFLOW.replace(
            "steps:\n",
            "agents:\n  critic: {system: You are a critic.}\nsteps:\n",
        ).replace("  - id: review\n", "  - id: review\n    agent: critic\n")
    )
    workflow = load_workflow(workflow_file)
    assert workflow.steps[0].system is None  # system_from, not the agent's system
    review, _ = dry_run_workflow(workflow, {})
    assert (
        review.system
        == "<prompt 'persona' of MCP server 'fx' (tone=strict), fetched when the step runs>"
    )
    assert review.prompt == (
        "<prompt 'review' of MCP server 'fx' (path=src/app.py, focus=races), fetched when the "
        "step runs>"
    )
