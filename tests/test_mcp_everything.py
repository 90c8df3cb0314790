"""lmflow's MCP client against `@modelcontextprotocol/server-everything` (pinned in
tests/node), a third-party server that exercises most of the protocol: tools it shows only
to clients that declare a capability, progress, roots, elicitation, a tool only callable as
a task, and a result over 1 MiB over streamable HTTP."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_support import TAG_VARIABLE, free_port, new_tag, wait_for_port, wait_until_gone
from test_mcp_client import Events

from runner.mcp import McpSessions
from runner.runlog import Scope, current_scope
from runner.server_prompts import PROMPT_GETTER
from runner.spec.model import HttpServer, StdioServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tag() -> Iterator[str]:
    value = new_tag()
    yield value
    assert wait_until_gone(value) == []


def everything(js: Path, tag: str, **settings: Any) -> StdioServer:
    return StdioServer(
        "everything", "node", (str(js), "stdio"), env={TAG_VARIABLE: tag}, **settings
    )


async def test_capability_tools_roots_elicitation_and_task_only_tools(
    everything_server_js: Path, tag: str, tmp_path: Path
) -> None:
    server = everything(everything_server_js, tag, elicitation="accept_defaults", roots=(".",))
    events = Events()
    async with McpSessions(
        {"everything": server}, log_dir=tmp_path, emit=events, workflow_dir=tmp_path
    ) as sessions:
        names = {tool.name for tool in sessions.tools("everything")}
        roots = await sessions.call_tool("everything", "get-roots-list", {})
        asked = await sessions.call_tool("everything", "trigger-elicitation-request", {})
    # Shown because lmflow declares roots and elicitation; not sampling, which it does not.
    assert {"get-roots-list", "trigger-elicitation-request"} <= names
    assert "trigger-sampling-request" not in names
    assert "simulate-research-query" not in names  # taskSupport: required
    assert tmp_path.as_uri() in roots.text
    # Its form has a required field without a default: accept_defaults cannot accept it.
    assert "declined" in asked.text
    (question,) = events.of("mcp_elicitation")
    assert question["action"] == "decline" and "name" in question["reason"]


async def test_progress_of_a_long_operation_extends_its_timeout(
    everything_server_js: Path, tag: str, tmp_path: Path
) -> None:
    """Four steps 0.75 s apart: 3 s in all, past the 2 s timeout, never 2 s without progress."""
    server = everything(everything_server_js, tag, timeout=2.0)
    events = Events()
    async with McpSessions({"everything": server}, log_dir=tmp_path, emit=events) as sessions:
        current_scope.set(Scope("wait"))
        done = await sessions.call_tool(
            "everything", "trigger-long-running-operation", {"duration": 3, "steps": 4}
        )
    assert not done.is_error, done.text
    assert "Long running operation completed" in done.text
    progress = [(e["step"], e["progress"], e["total"]) for e in events.of("mcp_progress")]
    assert progress == [("wait", float(i), 4.0) for i in range(1, 5)]


async def test_a_result_over_one_mib_over_streamable_http(
    everything_server_js: Path, tag: str
) -> None:
    port = free_port()
    process = subprocess.Popen(
        ["node", str(everything_server_js), "streamableHttp"],
        env={**os.environ, "PORT": str(port), TAG_VARIABLE: tag},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_for_port(port, process, "server-everything")
        message = "x" * 1_200_000
        async with McpSessions({"web": HttpServer("web", url)}) as sessions:
            echoed = await sessions.call_tool("web", "echo", {"message": message})
    finally:
        process.kill()
        process.wait()
    assert not echoed.is_error, echoed.text[:300]
    assert echoed.text == f"Echo: {message}"


async def test_its_prompts_with_arguments_are_listed_and_fetched(
    everything_server_js: Path, tag: str
) -> None:
    async with McpSessions({"everything": everything(everything_server_js, tag)}) as sessions:
        listed = {prompt.name: prompt for prompt in await sessions.prompts("everything")}
        weather = await sessions.call_tool(
            "everything",
            PROMPT_GETTER,
            {"name": "args-prompt", "arguments": {"city": "Oslo", "state": "Viken"}},
        )
        embedded = await sessions.call_tool(
            "everything",
            PROMPT_GETTER,
            {"name": "resource-prompt", "arguments": {"resourceType": "Text", "resourceId": "2"}},
        )
        refused = await sessions.call_tool(
            "everything", PROMPT_GETTER, {"name": "args-prompt", "arguments": {}}
        )
    arguments = [(a.name, bool(a.required)) for a in listed["args-prompt"].arguments or ()]
    assert arguments == [("city", True), ("state", False)]
    assert weather.structured == {
        "messages": [{"role": "user", "content": "What's weather in Oslo, Viken?"}]
    }
    assert embedded.structured is not None
    intro, resource = embedded.structured["messages"]
    assert "Text resource with id: 2" in intro["content"]
    assert resource["content"].startswith("Resource 2: This is a plaintext resource")
    assert refused.is_error and refused.text.startswith("prompt 'args-prompt' of MCP server")
