"""`lmflow serve` driven by the MCP SDK's own client, as a real subprocess over stdio and
streamable HTTP, against the loopback fake LM Studio and real MCP fixture servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fakes.lmstudio import FakeLMStudio
from mcp import Client, MCPError, StdioServerParameters
from mcp_support import (
    FIXTURE_SERVER,
    TAG_VARIABLE,
    free_port,
    new_tag,
    tagged_processes,
    wait_for_port,
    wait_until_gone,
)
from test_ask_steps import DEPLOY

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen/qwen3-coder-30b"

GREET = f"""\
version: 1
name: greet
description: Greet someone, in a tone.
inputs:
  who:
    type: string
    description: Whom to greet.
  times:
    type: integer
    default: 1
    minimum: 1
    maximum: 3
  tone:
    type: string
    enum: [warm, dry]
    default: warm
steps:
  - id: hello
    model: {MODEL}
    prompt: >-
      Say hello to {{{{ inputs.who }}}} {{{{ inputs.times }}}} time(s), {{{{ inputs.tone }}}}.
  - id: bye
    model: {MODEL}
    needs: [hello]
    prompt: "Now say goodbye."
outputs:
  greeting: "{{{{ steps.hello.output }}}}"
  farewell: "{{{{ steps.bye.output }}}}"
"""

BROKEN = """\
version: 1
name: broken
steps:
  - id: a
    model: x/y
    prompt: "{{ steps.nope.output }}"
"""


def slow_workflow(tag: str) -> str:
    """One step that waits for the model, with a real MCP server running meanwhile."""
    return f"""\
version: 1
name: slow
mcp_servers:
  fix:
    command: {sys.executable}
    args: [{FIXTURE_SERVER}, --name, fix]
    env: {{{TAG_VARIABLE}: {tag}}}
steps:
  - id: think
    model: {MODEL}
    prompt: "Think slowly."
    mcp: [fix]
outputs:
  answer: "{{{{ steps.think.output }}}}"
"""


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmflow_runner", "serve", *args]


@asynccontextmanager
async def stdio_client(
    directory: Path, *args: str, env: dict[str, str] | None = None, **client: Any
) -> AsyncIterator[Client]:
    """`lmflow serve DIR ARGS` as a subprocess, connected over stdio (`client`: more
    arguments of the SDK's `Client`)."""
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lmflow_runner", "serve", str(directory), *args],
        env={**os.environ, **(env or {})},
        cwd=str(directory),
    )
    async with Client(parameters, read_timeout_seconds=60, **client) as connected:
        yield connected


def project(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def runs(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text())
        for path in sorted((directory / ".lmflow" / "runs").glob("*/result.json"))
    ]


def finished_runs(directory: Path, count: int, within: float = 30.0) -> list[dict[str, Any]]:
    """The runs' results once `count` runs have ended (a bound, not a timing assertion)."""
    deadline = time.monotonic() + within
    while len(found := runs(directory)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


# --- stdio: tools, schemas, calls -----------------------------------------------------------


def test_every_valid_workflow_is_a_tool_with_schemas_and_runs_with_its_log(
    tmp_path: Path, fake_lmstudio: FakeLMStudio
) -> None:
    directory = project(tmp_path, **{"greet.yaml": GREET, "broken.yaml": BROKEN})

    async def session() -> None:
        async with stdio_client(directory, "--base-url", fake_lmstudio.url) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == {"greet", "agent", "models", "validate"}
            greet = tools["greet"]
            assert greet.description == "Greet someone, in a tone."
            assert greet.input_schema["required"] == ["who"]
            assert greet.input_schema["properties"]["who"] == {
                "type": "string",
                "description": "Whom to greet.",
            }
            assert greet.input_schema["properties"]["times"] == {
                "type": "integer",
                "minimum": 1,
                "maximum": 3,
                "default": 1,
            }
            assert greet.input_schema["properties"]["tone"]["enum"] == ["warm", "dry"]
            assert greet.output_schema is not None
            assert greet.output_schema["required"] == ["greeting", "farewell"]

            done = await client.call_tool("greet", {"who": "Ada", "times": 2})
            assert not done.is_error, done.content
            assert done.structured_content is not None
            assert "Ada" in done.structured_content["greeting"]
            assert "2 time(s), warm" in done.structured_content["greeting"]
            (record,) = runs(directory)
            assert record["status"] == "succeeded" and record["inputs"]["who"] == "Ada"
            assert record["run_id"] in done.content[0].text  # type: ignore[union-attr]

            bad = await client.call_tool("greet", {"who": "Ada", "times": 7})
            assert bad.is_error
            assert "input 'times'" in bad.content[0].text  # type: ignore[union-attr]
            unknown = await client.call_tool("greet", {"whom": "Ada"})
            assert unknown.is_error
            assert "unknown input 'whom'" in unknown.content[0].text  # type: ignore[union-attr]
            assert len(runs(directory)) == 1  # a bad argument starts no run

    asyncio.run(session())


def test_invalid_workflows_are_reported_once_on_stderr_and_stdout_stays_clean(
    tmp_path: Path,
) -> None:
    directory = project(tmp_path, **{"greet.yaml": GREET, "broken.yaml": BROKEN})
    done = subprocess.run(
        serve_command(str(directory)), input="", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("not served") == 1
    assert "broken.yaml is not a valid workflow" in done.stderr
    assert "broken.yaml:6:" in done.stderr  # the problem, with its place
    assert "greet" in done.stderr


def test_a_step_that_fails_is_a_tool_error_naming_the_step_and_run(
    tmp_path: Path, make_fake_lmstudio: Any
) -> None:
    fake = make_fake_lmstudio(chat_error=(500, {"error": "model crashed"}))
    directory = project(tmp_path, **{"greet.yaml": GREET})

    async def session() -> None:
        async with stdio_client(directory, "--base-url", fake.url) as client:
            failed = await client.call_tool("greet", {"who": "Ada"})
            assert failed.is_error
            text = failed.content[0].text  # type: ignore[union-attr]
            (record,) = runs(directory)
            assert record["run_id"] in text and "step 'hello' failed" in text

    asyncio.run(session())


def test_replay_answers_from_a_cassette_directory(tmp_path: Path) -> None:
    directory = project(tmp_path)
    planner = ROOT / "workflows" / "meeting-planner.yaml"

    async def session() -> None:
        parameters = StdioServerParameters(
            command=sys.executable,
            args=[
                *("-m", "lmflow_runner", "serve", str(directory), str(planner)),
                *("--replay", str(ROOT / "tests" / "cassettes")),
            ],
            env=dict(os.environ),
        )
        async with Client(parameters, read_timeout_seconds=60) as client:
            done = await client.call_tool("meeting-planner", {})
            assert not done.is_error, done.content
            assert done.structured_content is not None
            assert done.structured_content["everyone_fits"] is False

    asyncio.run(session())
    (record,) = runs(directory)
    assert record["status"] == "succeeded"


# --- the built-in tools ---------------------------------------------------------------------


def test_agent_takes_the_settings_of_a_step(tmp_path: Path, make_fake_lmstudio: Any) -> None:
    tag = new_tag()
    fake = make_fake_lmstudio(script=[[("echo", {"text": "ping"})], '{"said": "ping"}'])
    entry = {"command": sys.executable, "args": [str(FIXTURE_SERVER), "--name", "fix"]}
    entry["env"] = {TAG_VARIABLE: tag}  # type: ignore[assignment]
    directory = project(tmp_path, **{".mcp.json": json.dumps({"mcpServers": {"fix": entry}})})
    schema = {"type": "object", "properties": {"said": {"type": "string"}}, "required": ["said"]}

    async def session() -> None:
        async with stdio_client(directory, "--base-url", fake.url) as client:
            answer = await client.call_tool(
                "agent",
                {
                    "task": "Echo ping",
                    "servers": ["fix"],
                    "model": MODEL,
                    "tool_choice": "echo",
                    "temperature": 0,
                    "max_tokens": 64,
                    "output_schema": schema,
                },
            )
            assert not answer.is_error, answer.content
            assert answer.structured_content == {"answer": {"said": "ping"}}

    asyncio.run(session())
    first = fake.chat_requests[0]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "echo"}}
    assert (first["temperature"], first["max_tokens"]) == (0, 64)
    assert wait_until_gone(tag) == []


def test_models_agent_and_validate(tmp_path: Path, make_fake_lmstudio: Any) -> None:
    tag = new_tag()
    secret = "s3cret-from-the-environment"
    fake = make_fake_lmstudio(script=[[("fix__echo", {"text": secret})], "The echo said it."])
    mcp_json = {
        "mcpServers": {
            "fix": {
                "command": sys.executable,
                "args": [str(FIXTURE_SERVER), "--name", "fix"],
                "env": {TAG_VARIABLE: tag, "FIX_TOKEN": "${SERVE_TEST_SECRET}"},
            }
        }
    }
    directory = project(tmp_path, **{".mcp.json": json.dumps(mcp_json), "broken.yaml": BROKEN})

    async def session() -> None:
        env = {"SERVE_TEST_SECRET": secret}
        async with stdio_client(directory, "--base-url", fake.url, env=env) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            servers = tools["agent"].input_schema["properties"]["servers"]
            assert servers["items"]["enum"] == ["fix"]

            models = await client.call_tool("models", {})
            assert not models.is_error
            assert models.structured_content is not None
            listed = {m["id"]: m for m in models.structured_content["models"]}
            assert listed[MODEL]["state"] == "loaded" and listed[MODEL]["tool_use"] is True
            assert listed["google/gemma-3-270m"]["tool_use"] is False

            answer = await client.call_tool(
                "agent", {"task": "Echo ping", "servers": ["fix"], "model": MODEL}
            )
            assert not answer.is_error, answer.content
            assert answer.structured_content == {"answer": "The echo said it."}
            (record,) = runs(directory)
            assert record["steps"][0]["tool_calls"] == 1
            # ${SERVE_TEST_SECRET} in .mcp.json is an env value: masked wherever it shows
            events = next((directory / ".lmflow" / "runs").glob("*/events.jsonl")).read_text()
            assert secret not in events and '"text": "***"' in events

            missing = await client.call_tool(
                "agent", {"task": "Echo ping", "model": "qwen/qwen3-coder-31b"}
            )
            assert missing.is_error
            assert "did you mean 'qwen/qwen3-coder-30b'" in missing.content[0].text  # type: ignore[union-attr]

            no_task = await client.call_tool("agent", {"servers": ["fix"]})
            assert no_task.is_error
            assert "'task' is a required property" in no_task.content[0].text  # type: ignore[union-attr]
            no_model = await client.call_tool("agent", {"task": "x"})
            assert no_model.is_error
            assert "input 'model' is required" in no_model.content[0].text  # type: ignore[union-attr]
            bad_server = await client.call_tool("agent", {"task": "x", "servers": ["nope"]})
            assert bad_server.is_error
            assert "input 'servers': 'nope' is not one of ['fix']" in bad_server.content[0].text  # type: ignore[union-attr]
            with pytest.raises(MCPError, match="unknown tool 'nope'"):
                await client.call_tool("nope", {})
            long_line = await client.call_tool("validate", {"workflow": "x" * 5000 + ".yaml"})
            assert long_line.structured_content is not None
            assert long_line.structured_content["valid"] is False

            checked = await client.call_tool("validate", {"workflow": BROKEN})
            assert checked.structured_content is not None
            assert checked.structured_content["valid"] is False
            assert checked.structured_content["problems"][0]["line"] == 6
            by_path = await client.call_tool(
                "validate", {"workflow": str(directory / "broken.yaml")}
            )
            assert by_path.structured_content == checked.structured_content | {
                "problems": by_path.structured_content["problems"]  # type: ignore[index]
            }
            assert not by_path.structured_content["valid"]  # type: ignore[index]

    asyncio.run(session())
    assert wait_until_gone(tag) == []


# --- progress, cancellation, concurrency ----------------------------------------------------


def test_progress_is_notified_per_finished_step(
    tmp_path: Path, fake_lmstudio: FakeLMStudio
) -> None:
    directory = project(tmp_path, **{"greet.yaml": GREET})
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def session() -> None:
        async with stdio_client(directory, "--base-url", fake_lmstudio.url) as client:
            done = await client.call_tool("greet", {"who": "Ada"}, progress_callback=on_progress)
            assert not done.is_error

    asyncio.run(session())
    assert seen == [
        (1, 2, "step 'hello' succeeded"),
        (2, 2, "step 'bye' succeeded"),
    ]


def test_a_cancelled_call_stops_its_run_and_servers_while_serve_goes_on(
    tmp_path: Path, make_fake_lmstudio: Any
) -> None:
    tag = new_tag()
    fake = make_fake_lmstudio(chat_delay=30)
    directory = project(tmp_path, **{"slow.yaml": slow_workflow(tag)})

    async def session() -> None:
        async with stdio_client(directory, "--base-url", fake.url) as client:
            with anyio.CancelScope() as scope:

                async def cancel_once_thinking() -> None:
                    while not fake.count("/v1/chat/completions"):
                        await anyio.sleep(0.05)
                    assert tagged_processes(tag), "the run's MCP server should be running"
                    scope.cancel()

                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_once_thinking)
                    await client.call_tool("slow", {})
            assert scope.cancelled_caught
            assert await asyncio.to_thread(wait_until_gone, tag) == []
            # serve goes on: the same session still answers
            assert not (await client.call_tool("validate", {"workflow": GREET})).is_error
            # The client does not wait for the server's clean-up: the log ends meanwhile.
            (record,) = await asyncio.to_thread(finished_runs, directory, 1)
            assert record["status"] == "interrupted"
            assert record["error"] == "cancelled by the MCP client"

    asyncio.run(session())


def test_concurrent_calls_run_concurrently(tmp_path: Path, make_fake_lmstudio: Any) -> None:
    fake = make_fake_lmstudio(chat_delay=1.0)
    directory = project(tmp_path, **{"greet.yaml": GREET})
    tag = new_tag()

    async def session() -> None:
        env = {TAG_VARIABLE: tag}
        async with stdio_client(directory, "--base-url", fake.url, env=env) as client:
            results: list[Any] = []

            async def call(who: str) -> None:
                results.append(await client.call_tool("greet", {"who": who}))

            async with anyio.create_task_group() as group:
                group.start_soon(call, "Ada")
                group.start_soon(call, "Grace")
            assert not any(result.is_error for result in results)

    asyncio.run(session())
    assert fake.peak_in_flight == 2
    assert wait_until_gone(tag) == []  # serve ends when its client closes stdin


# --- streamable HTTP ------------------------------------------------------------------------


@contextmanager
def http_serve(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`lmflow serve --http 127.0.0.1:PORT ARGS` until the block ends: its /mcp URL, and
    the process (terminated on the way out; it must never have written to stdout)."""
    port = free_port()
    process = subprocess.Popen(
        serve_command(str(directory), "--http", f"127.0.0.1:{port}", *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_for_port(port, process, "lmflow serve --http", within=60)
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=60)
        assert out == b""


def test_http_serves_the_same_tools(tmp_path: Path, fake_lmstudio: FakeLMStudio) -> None:
    directory = project(tmp_path, **{"greet.yaml": GREET})

    async def session(url: str) -> None:
        async with Client(url, read_timeout_seconds=60) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {"greet", "agent", "models", "validate"}
            done = await client.call_tool("greet", {"who": "Ada"})
            assert not done.is_error, done.content
            assert "Ada" in done.structured_content["greeting"]  # type: ignore[index]

    with http_serve(directory, "--base-url", fake_lmstudio.url) as (url, _):
        asyncio.run(session(url))
    assert [record["status"] for record in runs(directory)] == ["succeeded"]


def test_http_with_a_token_answers_401_without_it(tmp_path: Path) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    directory = project(tmp_path, **{"greet.yaml": GREET})
    token = "a-long-random-serve-token"

    async def session(url: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(
                streamable_http_client(url, http_client=http), read_timeout_seconds=60
            ) as client,
        ):
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "greet" in names

    env = {"SERVE_TOKEN": token}
    with http_serve(directory, "--token-env", "SERVE_TOKEN", env=env) as (url, _):
        denied = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert denied.status_code == 401
        wrong = httpx.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": "Bearer wrong"},
        )
        assert wrong.status_code == 401
        asyncio.run(session(url))


def test_binding_beyond_loopback_needs_a_token(lmflow_cli: Any, tmp_path: Path) -> None:
    outcome = lmflow_cli("serve", str(tmp_path), "--http", "0.0.0.0:8765")
    assert outcome.exit_code == 2
    assert "needs a token" in outcome.stderr


def test_sigterm_ends_serve_and_the_runs_in_flight_with_their_servers(
    tmp_path: Path, make_fake_lmstudio: Any
) -> None:
    tag = new_tag()
    fake = make_fake_lmstudio(chat_delay=30)
    directory = project(tmp_path, **{"slow.yaml": slow_workflow(tag)})

    async def call(url: str) -> None:
        with contextlib.suppress(Exception):  # the server goes away mid-call
            async with Client(url, read_timeout_seconds=60) as client:
                await client.call_tool("slow", {})

    with http_serve(directory, "--base-url", fake.url) as (url, process):
        thread = threading.Thread(target=asyncio.run, args=(call(url),), daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not fake.count("/v1/chat/completions") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tagged_processes(tag), "the run's MCP server should be running"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    assert wait_until_gone(tag) == []
    (record,) = runs(directory)
    assert record["status"] == "interrupted"
    assert record["error"] == "terminated by SIGTERM"


def test_conflicting_options_are_a_command_line_error(lmflow_cli: Any, tmp_path: Path) -> None:
    cassette = tmp_path / "c.yaml"
    cassette.write_text("")
    outcome = lmflow_cli(
        "serve", str(tmp_path), "--replay", str(cassette), "--base-url", "http://x:1"
    )
    assert outcome.exit_code == 2
    assert "--base-url cannot be used with --replay" in outcome.stderr


# --- ask: steps as elicitation ----------------------------------------------------------------


def test_an_ask_step_is_an_elicitation_to_the_client(tmp_path: Path) -> None:
    from mcp.types import ElicitRequestFormParams, ElicitResult

    directory = project(tmp_path, **{"deploy.yaml": DEPLOY})
    asked: list[ElicitRequestFormParams] = []
    answers = iter([{"answer": True}, {"answer": "loud"}])

    async def answer(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content=next(answers))

    async def session() -> None:
        async with stdio_client(directory, elicitation_callback=answer, mode="legacy") as c:
            done = await c.call_tool("deploy", {})
            assert not done.is_error, done.content
            assert done.structured_content == {
                "go": True,
                "level": "loud",
                "said": "deploying (loud)",
            }

    asyncio.run(session())
    assert [params.message for params in asked] == ["Deploy to staging?", "How loud?"]
    assert asked[0].requested_schema == {
        "type": "object",
        "properties": {"answer": {"title": "go", "type": "boolean"}},
        "required": ["answer"],
    }
    assert asked[1].requested_schema["properties"]["answer"]["enum"] == ["quiet", "loud"]
    assert asked[1].requested_schema["properties"]["answer"]["default"] == "quiet"
    (record,) = runs(directory)
    answered = [
        json.loads(line)
        for line in (directory / ".lmflow/runs" / record["run_id"] / "events.jsonl")
        .read_text()
        .splitlines()
        if '"ask_answered"' in line
    ]
    assert [(event["answer"], event["by"]) for event in answered] == [
        (True, "asked"),
        ("loud", "asked"),
    ]


def test_a_declined_question_fails_the_step_and_no_elicitation_uses_defaults(
    tmp_path: Path,
) -> None:
    from mcp.types import ElicitResult

    directory = project(
        tmp_path,
        **{
            "deploy.yaml": DEPLOY,
            "quiet.yaml": DEPLOY.replace("name: deploy", "name: quiet").replace(
                "    type: boolean\n", "    type: boolean\n    default: false\n"
            ),
        },
    )

    async def decline(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="decline")

    async def session() -> None:
        async with stdio_client(directory, elicitation_callback=decline, mode="legacy") as c:
            declined = await c.call_tool("deploy", {})
            assert declined.is_error
            text = declined.content[0].text  # type: ignore[union-attr]
            assert "the MCP client declined the question of step 'go'" in text
        async with stdio_client(directory) as plain:  # no elicitation
            refused = await plain.call_tool("deploy", {})
            assert refused.is_error
            text = refused.content[0].text  # type: ignore[union-attr]
            assert "step 'go' asks a question, and this MCP client cannot be asked" in text
            defaults = await plain.call_tool("quiet", {})
            assert not defaults.is_error, defaults.content
            assert defaults.structured_content == {"go": False, "level": "quiet", "said": ""}

    asyncio.run(session())
    assert len(runs(directory)) == 2  # the refused call started no run
