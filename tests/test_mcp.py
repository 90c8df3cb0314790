"""runner/mcp.py against real MCP servers over real pipes and sockets.

Servers: our SDK fixture server (stdio and streamable HTTP), `mcp-server-time` from PyPI
and the npm filesystem server. Every server carries a tag in its environment, so each test
can prove from /proc that no process of its servers outlives the sessions.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from mcp_support import (
    TAG_VARIABLE,
    fixture_server,
    http_fixture,
    new_tag,
    tagged_processes,
    wait_until_gone,
)

from runner.chat import ToolResult
from runner.errors import EXIT_ENVIRONMENT, MCPServerError
from runner.mcp import McpSessions, function_name
from runner.spec.model import HttpServer, StdioServer

pytestmark = pytest.mark.anyio

FIXTURE_TOOLS = {"echo", "add", "fail", "sleep", "blob", "crash", "read_file", "picture", "header"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tag() -> str:
    return new_tag()


# --- the fixture server over stdio ----------------------------------------------------------


async def test_tools_are_listed_through_every_page(tag: str, tmp_path: Path) -> None:
    server = fixture_server("paged", "--extra-tools", "25", "--page-size", "7", tag=tag)
    async with McpSessions({"paged": server}, log_dir=tmp_path) as sessions:
        names = [tool.name for tool in sessions.tools("paged")]
    assert len(names) == len(FIXTURE_TOOLS) + 25
    assert set(names) == FIXTURE_TOOLS | {f"extra_{i:03d}" for i in range(25)}


async def test_stderr_goes_to_the_log_dir_not_the_terminal(
    tag: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with McpSessions({"fx": fixture_server("fx", tag=tag)}, log_dir=tmp_path):
        pass
    assert "fixture server fx starting" in (tmp_path / "mcp-fx.stderr.log").read_text()
    assert "fixture server" not in capfd.readouterr().err


async def test_stderr_is_masked_as_it_is_written_not_when_the_server_stops(
    tag: str, tmp_path: Path
) -> None:
    """A run killed outright never gets to clean up: the log must be masked already."""
    secret = "s3cr3t-name"
    server = fixture_server(secret, tag=tag)
    redact = lambda text: text.replace(secret, "***")  # noqa: E731
    async with McpSessions({"fx": server}, log_dir=tmp_path, redact=redact):
        while_running = (tmp_path / "mcp-fx.stderr.log").read_text()
    assert "fixture server *** starting" in while_running
    assert secret not in while_running
    assert secret not in (tmp_path / "mcp-fx.stderr.log").read_text()


async def test_results_text_structured_errors_and_other_content(tag: str) -> None:
    async with McpSessions({"fx": fixture_server("fx", tag=tag)}) as sessions:
        echo = await sessions.call_tool("fx", "echo", {"text": "hello"})
        added = await sessions.call_tool("fx", "add", {"a": 2, "b": 3})
        failed = await sessions.call_tool("fx", "fail", {"message": "it broke"})
        picture = await sessions.call_tool("fx", "picture", {})
        unknown = await sessions.call_tool("fx", "no_such_tool", {})
        bad_args = await sessions.call_tool("fx", "add", {"a": "two"})
    assert echo == ToolResult("hello", is_error=False, structured={"result": "hello"})
    assert added.structured == {"result": 5.0}
    assert failed.is_error and "it broke" in failed.text
    assert picture.text == "a picture follows\n[image content: image/png]"
    assert not picture.is_error
    assert unknown.is_error and "no_such_tool" in unknown.text
    assert bad_args.is_error


async def test_each_server_runs_once_however_many_toolboxes_and_calls(tag: str) -> None:
    servers = {"a": fixture_server("a", tag=tag), "b": fixture_server("b", tag=tag)}
    results: dict[int, str] = {}
    async with McpSessions(servers) as sessions:
        toolboxes = [sessions.toolbox(["a", "b"]) for _ in range(10)]

        async def call(index: int) -> None:
            result = await toolboxes[index].call("a__echo", {"text": f"call {index}"})
            results[index] = result.text

        async with anyio.create_task_group() as group:
            for index in range(10):
                group.start_soon(call, index)
        running = tagged_processes(tag)
    assert len(running) == 2
    assert results == {index: f"call {index}" for index in range(10)}


async def test_a_call_past_its_timeout_is_a_tool_error_and_the_server_stays_usable(
    tag: str,
) -> None:
    server = fixture_server("slow", tag=tag, timeout=2)
    async with McpSessions({"slow": server}) as sessions:
        late = await sessions.call_tool("slow", "sleep", {"seconds": 30})
        after = await sessions.call_tool("slow", "echo", {"text": "still here"})
    assert late.is_error
    assert "did not answer within 2s" in late.text
    assert after == ToolResult("still here", structured={"result": "still here"})


async def test_a_server_that_dies_mid_call_raises_server_error(tag: str, tmp_path: Path) -> None:
    async with McpSessions({"fx": fixture_server("fx", tag=tag)}, log_dir=tmp_path) as sessions:
        with pytest.raises(MCPServerError) as crashed:
            await sessions.call_tool("fx", "crash", {})
        with pytest.raises(MCPServerError) as later:
            await sessions.toolbox(["fx"]).call("echo", {"text": "anyone?"})
    for error in (crashed.value, later.value):
        assert "MCP server 'fx' stopped" in error.message
        assert "fixture server fx starting" in error.message  # the tail of its stderr
    assert crashed.value.exit_code == EXIT_ENVIRONMENT
    assert wait_until_gone(tag) == []


async def test_a_server_that_stopped_is_reported_redacted(tag: str) -> None:
    secret = "s3cr3t-name"
    server = fixture_server(secret, tag=tag)
    redact = lambda text: text.replace(secret, "***")  # noqa: E731
    async with McpSessions({"fx": server}, redact=redact) as sessions:
        with pytest.raises(MCPServerError) as crashed:
            await sessions.call_tool("fx", "crash", {})
    assert "MCP server 'fx' stopped" in crashed.value.message
    assert "--name ***" in crashed.value.message  # the command line
    assert "fixture server *** starting" in crashed.value.message  # the tail of its stderr
    assert secret not in crashed.value.message
    assert wait_until_gone(tag) == []


async def test_a_missing_command_names_the_server_and_the_command() -> None:
    server = StdioServer("ghost", "lmflow-no-such-command", ("--serve", "x"))
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions({"ghost": server}):
            pytest.fail("the body must not run")
    assert raised.value.exit_code == EXIT_ENVIRONMENT
    assert "MCP server 'ghost' would not start" in raised.value.message
    assert "command not found: lmflow-no-such-command" in raised.value.message
    assert "command: lmflow-no-such-command --serve x" in raised.value.message


async def test_a_missing_working_directory_is_named_as_such(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    server = StdioServer("fx", sys.executable, ("-c", "pass"), cwd=str(missing))
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions({"fx": server}):
            pytest.fail("the body must not run")
    assert f"working directory not found: {missing}" in raised.value.message
    assert "command not found" not in raised.value.message


async def test_a_crash_at_start_shows_the_stderr_tail_and_stops_the_other_servers(
    tag: str,
) -> None:
    servers = {
        "good": fixture_server("good", tag=tag),
        "bad": fixture_server("bad", "--crash-on-start", tag=tag),
    }
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions(servers):
            pytest.fail("the body must not run")
    message = raised.value.message
    assert "MCP server 'bad' would not start" in message
    assert "mcp_fixture_server.py --name bad --crash-on-start" in message
    assert "fatal: configured to crash on start" in message
    assert "'good'" not in message
    assert wait_until_gone(tag) == []


async def test_start_failures_are_reported_in_declaration_order(tag: str) -> None:
    # "slow" fails half a second in, "ghost" at once: the report still follows the file.
    slow = StdioServer(
        "slow", sys.executable, ("-c", "import time; time.sleep(0.5)"), env={TAG_VARIABLE: tag}
    )
    servers = {
        "slow": slow,
        "good": fixture_server("good", tag=tag),
        "ghost": StdioServer("ghost", "lmflow-no-such-command"),
    }
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions(servers):
            pytest.fail("the body must not run")
    headlines = [line for line in raised.value.message.splitlines() if line.startswith("MCP")]
    assert [line.split("'")[1] for line in headlines] == ["slow", "ghost"]
    assert wait_until_gone(tag) == []


async def test_every_message_about_a_server_is_redacted(tag: str) -> None:
    secret = "s3cr3t-value"
    # The secret is in the command line, and the server repeats it on stderr before it dies.
    leaky = StdioServer(
        "leaky",
        sys.executable,
        ("-c", "import sys; print(f'token {sys.argv[1]}', file=sys.stderr)", secret),
        env={TAG_VARIABLE: tag},
    )
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions({"leaky": leaky}, redact=lambda t: t.replace(secret, "***")):
            pytest.fail("the body must not run")
    message = raised.value.message
    assert secret not in message
    assert "file=sys.stderr)' ***\n" in message  # the command line
    assert "    token ***" in message
    assert wait_until_gone(tag) == []


async def test_a_server_that_never_answers_the_handshake_times_out(tag: str) -> None:
    mute = StdioServer(
        "mute",
        sys.executable,
        ("-c", "import sys, time; print('thinking', file=sys.stderr, flush=True); time.sleep(60)"),
        env={TAG_VARIABLE: tag},
        startup_timeout=1,
    )
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions({"mute": mute}):
            pytest.fail("the body must not run")
    assert "no answer to the handshake within 1s" in raised.value.message
    assert wait_until_gone(tag) == []


# --- names and allow-lists ----------------------------------------------------------------


def test_function_names_follow_the_openai_rules() -> None:
    assert function_name("read_file") == "read_file"
    assert function_name("git.status") == "git_status"
    long = "x" * 80
    shortened = function_name(long)
    assert len(shortened) == 64 and shortened.startswith("x" * 55 + "_")
    assert function_name(long) == shortened  # stable from run to run
    assert function_name("a.b", salted=True) != function_name("a_b", salted=True)
    assert function_name("").startswith("_")


async def test_colliding_names_are_qualified_and_both_reachable(tag: str) -> None:
    servers = {
        "one": fixture_server("one", tag=tag),
        "two": fixture_server("two", "--extra-tools", "1", tag=tag),
    }
    async with McpSessions(servers) as sessions:
        toolbox = sessions.toolbox(["one", "two"])
        names = {spec.name for spec in toolbox.specs()}
        from_one = await toolbox.call("one__read_file", {"path": "p"})
        from_two = await toolbox.call("two__read_file", {"path": "p"})
        plain = await toolbox.call("read_file", {"path": "p"})
    assert {"one__read_file", "two__read_file", "extra_000"} <= names
    assert "read_file" not in names
    assert from_one.text == "one read p"
    assert from_two.text == "two read p"
    assert plain.is_error and "one__read_file" in plain.text  # lists what is available


async def test_allow_lists_take_tool_and_server_dot_tool(tag: str) -> None:
    servers = {"one": fixture_server("one", tag=tag), "two": fixture_server("two", tag=tag)}
    async with McpSessions(servers) as sessions:
        toolbox = sessions.toolbox(["one", "two"], ["two.read_file", "add"])
        names = sorted(spec.name for spec in toolbox.specs())
        read = await toolbox.call("read_file", {"path": "p"})
        blocked = await toolbox.call("echo", {"text": "x"})
        with pytest.raises(MCPServerError) as missing:
            sessions.toolbox(["one"], ["read_fil", "echo"])
    # `read_file` is unique once the allow-list picked one of the two: it keeps its name.
    assert names == ["one__add", "read_file", "two__add"]
    assert read.text == "two read p"
    assert blocked.is_error
    assert missing.value.exit_code == EXIT_ENVIRONMENT
    assert "'read_fil'" in missing.value.message and "'echo'" not in missing.value.message
    assert "one.read_file" in (missing.value.hint or "")


# --- streamable HTTP ----------------------------------------------------------------------


async def test_http_server_with_headers(tag: str) -> None:
    with http_fixture("--name", "web", "--extra-tools", "12", "--page-size", "5") as (url, _):
        server = HttpServer("web", url, headers={"X-Lmflow-Test": tag})
        async with McpSessions({"web": server}) as sessions:
            header = await sessions.call_tool("web", "header", {"key": "X-Lmflow-Test"})
            failed = await sessions.call_tool("web", "fail", {"message": "over http"})
            count = len(sessions.tools("web"))
    assert header.text == tag
    assert failed.is_error and "over http" in failed.text
    assert count == len(FIXTURE_TOOLS) + 12


async def test_http_timeout_is_a_tool_error(http_fixture_url: str) -> None:
    server = HttpServer("web", http_fixture_url, timeout=2)
    async with McpSessions({"web": server}) as sessions:
        late = await sessions.call_tool("web", "sleep", {"seconds": 30})
        after = await sessions.call_tool("web", "echo", {"text": "ok"})
    assert late.is_error and "did not answer" in late.text
    assert after.text == "ok"


async def test_http_server_that_goes_away_raises_server_error_not_cancellation() -> None:
    with http_fixture() as (url, process):
        async with McpSessions({"web": HttpServer("web", url)}) as sessions:
            process.kill()
            process.wait()
            with pytest.raises(MCPServerError) as raised:
                await sessions.call_tool("web", "echo", {"text": "x"})
            # The step that was calling carries on: its task was not cancelled.
            await anyio.sleep(0)
    assert "MCP server 'web' stopped" in raised.value.message
    assert f"url: {url}" in raised.value.message


async def test_http_server_that_is_not_there_will_not_start() -> None:
    with http_fixture() as (url, _):
        pass  # the port is free again
    with pytest.raises(MCPServerError) as raised:
        async with McpSessions({"web": HttpServer("web", url)}):
            pytest.fail("the body must not run")
    assert "MCP server 'web' would not start" in raised.value.message
    assert "ConnectError" in raised.value.message


# --- third-party servers ------------------------------------------------------------------


async def test_mcp_server_time_from_pypi(tag: str) -> None:
    server = StdioServer(
        "time",
        sys.executable,
        ("-m", "mcp_server_time", "--local-timezone", "UTC"),
        env={TAG_VARIABLE: tag},
    )
    async with McpSessions({"time": server}) as sessions:
        names = {tool.name for tool in sessions.tools("time")}
        now = await sessions.toolbox(["time"]).call("get_current_time", {"timezone": "UTC"})
        wrong = await sessions.call_tool("time", "get_current_time", {"timezone": "Mars/Base"})
    assert names == {"get_current_time", "convert_time"}
    assert not now.is_error
    assert now.structured["timezone"] == "UTC"
    assert wrong.is_error
    assert wait_until_gone(tag) == []


@pytest.mark.npm
async def test_npm_filesystem_server_next_to_the_fixture(
    tag: str, tmp_path: Path, filesystem_server_js: Path
) -> None:
    (tmp_path / "notes.txt").write_text("remember the milk\n")
    servers = {
        "fs": StdioServer(
            "fs", "node", (str(filesystem_server_js), str(tmp_path)), env={TAG_VARIABLE: tag}
        ),
        "fx": fixture_server("fx", tag=tag),
    }
    async with McpSessions(servers, log_dir=tmp_path / "logs") as sessions:
        toolbox = sessions.toolbox(["fs", "fx"], ["list_directory", "read_text_file", "read_file"])
        names = sorted(spec.name for spec in toolbox.specs())
        listing = await toolbox.call("list_directory", {"path": str(tmp_path)})
        text = await toolbox.call("read_text_file", {"path": str(tmp_path / "notes.txt")})
        outside = await toolbox.call("read_text_file", {"path": "/etc/hostname"})
        from_fixture = await toolbox.call("fx__read_file", {"path": "p"})
    assert names == ["fs__read_file", "fx__read_file", "list_directory", "read_text_file"]
    assert "notes.txt" in listing.text
    assert text.text.strip() == "remember the milk"
    assert outside.is_error  # outside the allowed directory
    assert from_fixture.text == "fx read p"
    assert wait_until_gone(tag) == []


@pytest.mark.npm
async def test_npx_process_tree_is_gone_after_close(
    tag: str, tmp_path: Path, node_modules: Path
) -> None:
    """npx runs the server as npm -> sh -> node: the whole tree must go."""
    server = StdioServer(
        "fs",
        "npx",
        ("-y", "@modelcontextprotocol/server-filesystem", str(tmp_path)),
        env={TAG_VARIABLE: tag},
        cwd=str(node_modules.parent),  # npx finds the pinned install: no download
    )
    async with McpSessions({"fs": server}) as sessions:
        assert len(tagged_processes(tag)) >= 2
        assert "list_directory" in {tool.name for tool in sessions.tools("fs")}
    assert wait_until_gone(tag) == []


# --- no process outlives the sessions -----------------------------------------------------


async def test_no_process_left_after_an_exception_in_the_body(tag: str) -> None:
    servers = {"a": fixture_server("a", tag=tag), "b": fixture_server("b", tag=tag)}
    with pytest.raises(ValueError, match="step blew up"):
        async with McpSessions(servers):
            assert len(tagged_processes(tag)) == 2
            raise ValueError("step blew up")
    assert wait_until_gone(tag) == []


@pytest.mark.parametrize(
    "prelude",
    [
        "sleep 300 &",  # the server's own process group
        "set -m; sleep 300 &",  # job control: a process group of its own, same session
    ],
)
async def test_what_a_server_starts_in_the_background_goes_with_it(tag: str, prelude: str) -> None:
    """The server exits on stdin EOF at once; what it left running must still go."""
    fixture = fixture_server("fx", tag=tag)
    server = replace(
        fixture,
        command="bash",
        args=("-c", f"{prelude} exec {shlex.join([fixture.command, *fixture.args])}"),
    )
    async with McpSessions({"fx": server}) as sessions:
        assert len(tagged_processes(tag)) == 2
        assert (await sessions.call_tool("fx", "echo", {"text": "hi"})).text == "hi"
    assert wait_until_gone(tag) == []


async def test_no_process_left_after_cancellation_mid_call(tag: str) -> None:
    servers = {"a": fixture_server("a", tag=tag), "b": fixture_server("b", tag=tag)}
    calling = anyio.Event()
    async with anyio.create_task_group() as group:

        async def run() -> None:
            async with McpSessions(servers) as sessions:
                calling.set()
                await sessions.call_tool("a", "sleep", {"seconds": 60})
            pytest.fail("the call must have been cancelled")

        group.start_soon(run)
        await calling.wait()
        await anyio.sleep(0.2)  # let the call reach the server
        group.cancel_scope.cancel()
    assert wait_until_gone(tag) == []


async def test_no_process_left_after_cancellation_during_start(tag: str) -> None:
    servers = {
        "ready": fixture_server("ready", tag=tag),
        "mute": StdioServer(
            "mute", sys.executable, ("-c", "import time; time.sleep(60)"), env={TAG_VARIABLE: tag}
        ),
    }
    with anyio.move_on_after(1) as scope:
        async with McpSessions(servers):
            pytest.fail("the body must not run")
    assert scope.cancelled_caught
    assert wait_until_gone(tag) == []


def test_no_process_left_after_sigint(tag: str, tmp_path: Path) -> None:
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group, mid-call."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import anyio, sys
            sys.path[:0] = [{str(Path(__file__).parent)!r}]
            from mcp_support import fixture_server
            from runner.mcp import McpSessions

            async def main():
                servers = {{n: fixture_server(n, tag={tag!r}) for n in ("a", "b")}}
                async with McpSessions(servers) as sessions:
                    print("ready", flush=True)
                    await sessions.call_tool("a", "sleep", {{"seconds": 60}})

            anyio.run(main)
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        assert len(tagged_processes(tag)) == 2
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    assert "KeyboardInterrupt" in err
    assert wait_until_gone(tag) == []
