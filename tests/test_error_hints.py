"""Every error of the environment says how to fix it: each class has a default hint, the
places that know more say more, and a step that fails on one shows the hint too."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
from fakes.lmstudio import down_url
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE
from test_run_cli import Make, assert_clean, fixture, lmflow, workflow
from test_run_cli import tag as tag  # the fixture: no process outlives a test

import runner.errors as errors
from runner.errors import EnvironmentNotReadyError, LmflowError, MCPServerError


def environment_errors() -> list[type[EnvironmentNotReadyError]]:
    found = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, EnvironmentNotReadyError)
    ]
    assert len(found) >= 10  # the walk found the hierarchy, not an empty list
    return found


@pytest.mark.parametrize("cls", environment_errors(), ids=lambda cls: cls.__name__)
def test_every_environment_error_has_a_hint_without_being_given_one(
    cls: type[EnvironmentNotReadyError],
) -> None:
    if cls is errors.ToolStepsInvalidError:  # built from the problems found
        error: EnvironmentNotReadyError = cls([], "wf.yaml")
    else:
        extra = {"model": "m", "available": []} if cls is errors.ModelNotFoundError else {}
        error = cls("something is missing", **extra)  # type: ignore[arg-type]
    assert error.hint, f"{cls.__name__} has no hint"
    assert error.exit_code == errors.EXIT_ENVIRONMENT


def test_a_hint_given_where_the_error_is_raised_wins() -> None:
    assert MCPServerError("x", hint="do this").hint == "do this"
    assert LmflowError("x").hint is None  # not every error of the workflow has a generic fix


def test_a_failing_tool_step_has_a_hint() -> None:
    assert "`lmflow tools FILE`" in (errors.ToolExecutionError("tool x failed").hint or "")


# --- the cases, end to end ------------------------------------------------------------------


def hint_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.strip().startswith("hint: ")]


def test_a_missing_server_command_says_to_install_it(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(script=["unused"])
    file = workflow(
        tmp_path,
        """
        mcp_servers:
          x: {command: lmflow-no-such-command}
        steps:
          - {id: s, mcp: [x], prompt: hi}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url)
    assert run.code == 3
    assert "command not found: lmflow-no-such-command" in run.stderr
    assert hint_lines(run.stderr) == [
        "hint: install 'lmflow-no-such-command' or give its full path in the server's "
        "`command:` (it is not on PATH)"
    ]
    assert_clean(run)


def test_an_unknown_tool_is_reported_before_the_run_with_hints(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: s, tool: fx.no_such_tool, with: {{}}}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 3, run.stderr  # the tool lists are known before the first step
    assert "has no tool 'no_such_tool'" in run.stderr
    tools, fix = hint_lines(run.stderr)
    assert tools.startswith("hint: tools of 'fx': add, ")
    assert fix == f"hint: `lmflow tools {file}` lists each tool with its arguments"
    assert_clean(run)


def test_a_server_answering_an_error_fails_the_step_with_a_hint(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(chat_error=(500, {"error": "Input should be 'text' or 'json_object'"}))
    file = workflow(tmp_path, "steps:\n  - {id: s, prompt: hi}\n")
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url)
    assert run.code != 0
    assert "Input should be 'text' or 'json_object'" in run.stderr
    assert hint_lines(run.stderr), run.stderr
    assert_clean(run)


def test_an_unreachable_server_for_the_agent_has_a_hint(tmp_path: Path) -> None:
    inline = f"fx=env {TAG_VARIABLE}=unused {sys.executable} {FIXTURE_SERVER}"
    run = lmflow(
        tmp_path, "agent", "--server", inline, "--model", "m", "--base-url", down_url(), "x"
    )
    assert run.code == 3
    assert hint_lines(run.stderr), run.stderr
    assert_clean(run)
