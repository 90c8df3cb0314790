"""`lmflow serve`'s pure parts: tool names, schemas and servers from a .mcp.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmflow_runner import load_workflow
from lmflow_runner.errors import ConfigurationError
from lmflow_runner.serve import served
from lmflow_runner.serve_tools import tool_name
from lmflow_runner.server_files import read_mcp_json
from lmflow_runner.spec.model import HttpServer, StdioServer


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
