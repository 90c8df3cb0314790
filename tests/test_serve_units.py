"""`lmflow serve`'s pure parts: tool names, schemas and servers from a .mcp.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, new_tag, wait_until_gone

from lmflow_runner import RunOptions, load_workflow, run_workflow_sync
from lmflow_runner.errors import ConfigurationError
from lmflow_runner.serve import served
from lmflow_runner.serve_tools import tool_name
from lmflow_runner.spec.model import HttpServer, StdioServer
from lmflow_runner.spec.server_files import read_mcp_json


def workflow_file(directory: Path, file: str, name: str) -> Path:
    path = directory / file
    path.write_text(
        f"version: 1\nname: {name}\nsteps:\n  - id: a\n    model: x/y\n    prompt: hi\n"
    )
    return path


def test_tool_names_keep_to_what_mcp_allows_and_collisions_are_reported(tmp_path: Path) -> None:
    spaced = load_workflow(workflow_file(tmp_path, "a.yaml", "'Weekly report: team!'"))
    assert tool_name(spaced) == "Weekly-report-team"
    reported: list[str] = []
    workflows = [
        spaced,
        load_workflow(workflow_file(tmp_path, "b.yaml", "agent")),
        load_workflow(workflow_file(tmp_path, "c.yaml", "'Weekly report: team'")),
    ]
    assert list(served(workflows, reported.append)) == ["Weekly-report-team"]
    assert reported == [
        f"not served: {tmp_path / 'b.yaml'}: the tool name 'agent' is a built-in tool",
        f"not served: {tmp_path / 'c.yaml'}: the tool name 'Weekly-report-team' is taken "
        f"by {tmp_path / 'a.yaml'}",
    ]


def test_mcp_json_servers_read_variables_from_the_environment_as_templates(
    tmp_path: Path,
) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "gh": {
                        "command": "npx",
                        "args": ["-y", "server-github"],
                        "env": {"GITHUB_TOKEN": "${GH_TOKEN}"},
                    },
                    "web": {"type": "http", "url": "https://x/mcp", "headers": {"A": "${K}"}},
                }
            }
        )
    )
    servers = read_mcp_json(path)
    assert servers["gh"] == StdioServer(
        "gh", "npx", ("-y", "server-github"), env={"GITHUB_TOKEN": "{{ env.GH_TOKEN }}"}
    )
    assert servers["web"] == HttpServer("web", "https://x/mcp", {"A": "{{ env.K }}"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not JSON"),
        ("[]", "has no `mcpServers` object"),
        ('{"mcpServers": {"x": {"args": []}}}', "server 'x' has neither a `command` nor a `url`"),
    ],
)
def test_a_file_that_is_not_an_mcp_json_says_why(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        read_mcp_json(path)
    assert message in caught.value.message


def test_agent_workflow_names_the_servers_it_knows_for_an_unknown_one() -> None:
    from lmflow_runner import agent_workflow

    fix = StdioServer("fix", "python")
    with pytest.raises(ConfigurationError) as caught:
        agent_workflow("do it", model="m/x", servers={"fix": fix}, use=["nope"])
    assert "unknown MCP server(s): nope" in caught.value.message
    assert "known: fix" in (caught.value.hint or "")
    workflow = agent_workflow("do it", model="m/x", servers={"fix": fix}, use=["fix"])
    assert [step.id for step in workflow.steps] == ["agent"]
    assert workflow.mcp_servers["fix"] == fix


# --- servers by name from LM Studio's mcp.json or the project's .mcp.json -------------------


def imported(directory: Path, servers: str) -> Path:
    path = directory / "w.yaml"
    path.write_text(
        f"version: 1\nname: w\nmcp_servers:\n{servers}steps:\n"
        "  - id: echo\n    tool: fix.echo\n    with: {text: hello}\n"
        "outputs:\n  said: '{{ steps.echo.output }}'\n"
    )
    return path


def mcp_json(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {
        "command": sys.executable,
        "args": [str(FIXTURE_SERVER), "--name", "fixture"],
        "env": {TAG_VARIABLE: tag, "FIX_TOKEN": "${FIX_TOKEN}"},
    }
    (folder / ("mcp.json" if folder.name == ".lmstudio" else ".mcp.json")).write_text(
        json.dumps({"mcpServers": {"fixture": entry}})
    )


def test_a_server_from_the_project_mcp_json_runs_with_the_workflows_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_lmstudio: FakeLMStudio
) -> None:
    tag = new_tag()
    mcp_json(tmp_path, tag)  # above the workflow's folder: the nearest one counts
    folder = tmp_path / "workflows"
    folder.mkdir()
    path = imported(folder, "  fix: {from: project, name: fixture, timeout: 5}\n")
    workflow = load_workflow(path)
    server = workflow.mcp_servers["fix"]
    assert isinstance(server, StdioServer) and server.name == "fix" and server.timeout == 5
    assert server.env["FIX_TOKEN"] == "{{ env.FIX_TOKEN }}"
    monkeypatch.setenv("FIX_TOKEN", "token-from-the-environment")
    options = RunOptions(base_url=fake_lmstudio.url, runs_dir=tmp_path / "runs")
    result = run_workflow_sync(workflow, {}, options)
    assert result.ok, result.error
    assert result.outputs["said"] == {"result": "hello"}  # the structured result
    assert wait_until_gone(tag) == []


def test_validate_names_the_servers_a_file_has_with_did_you_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lmflow_cli: Any
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = imported(
        tmp_path,
        "  fix: {from: lmstudio, name: fixtre}\n  other: {from: project}\n",
    )
    outcome = lmflow_cli("validate", "--offline", str(path))
    assert outcome.exit_code == 2
    home_file = tmp_path / "home" / ".lmstudio" / "mcp.json"
    assert f"server 'fixtre' is to come from {home_file}, which does not exist" in outcome.stdout
    assert "server 'other' is to come from .mcp.json in" in outcome.stdout
    mcp_json(tmp_path / "home" / ".lmstudio", new_tag())
    outcome = lmflow_cli("validate", "--offline", str(path))
    assert (
        f"w.yaml:4:31: error: {home_file} declares no server 'fixtre'; did you mean "
        "'fixture'? [unknown-imported-server]"  # at the `name:` value
    ) in outcome.stdout
    assert "hint: servers in it: fixture" in outcome.stdout
