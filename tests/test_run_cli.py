"""`lmflow run`, `lmflow tools` and `lmflow agent` end to end, as real subprocesses.

LM Studio is the fake in script mode (a real HTTP server: each test states the model's turns
and then checks what the fake received). The MCP servers are real processes: our SDK
fixture server over stdio and streamable HTTP, `mcp-server-time` from PyPI, and the npm
filesystem server run by node. Every server carries a tag in its environment, so each test
can prove from /proc that no process outlives the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio, down_url
from hostile import ALIAS_BOMB, ALIAS_LOOP, nested_list
from mcp_support import (
    FIXTURE_SERVER,
    TAG_VARIABLE,
    counted_fixture_entry,
    http_fixture,
    new_tag,
    tagged_processes,
    wait_until_gone,
)

from runner.errors import MCPServerError

MODEL = "qwen/qwen3-coder-30b"  # loaded on the fake by default
HEAD = f"version: 1\nname: e2e\ndefaults: {{model: {MODEL}}}\n"
Make = Callable[..., FakeLMStudio]


@pytest.fixture
def tag() -> Iterator[str]:
    """The tag of this test's processes; none of them may outlive the test."""
    value = new_tag()
    yield value
    assert wait_until_gone(value) == []


@dataclass
class Run:
    """A finished `lmflow` process and the run directory it left in `cwd`."""

    code: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def run_dir(self) -> Path:
        (found,) = (self.cwd / ".lmflow" / "runs").iterdir()
        return found

    def events(self, path: Path | None = None) -> list[dict[str, Any]]:
        lines = (path or self.run_dir / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def result(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "result.json").read_text())


def environment(cwd: Path, tag: str) -> dict[str, str]:
    env = {**os.environ, "LMFLOW_CACHE_DIR": str(cwd / "cache"), TAG_VARIABLE: tag}
    for name in ("LMFLOW_BASE_URL", "LM_API_TOKEN", "NO_COLOR"):
        env.pop(name, None)
    return env


def lmflow(cwd: Path, *args: str, tag: str = "untagged", env: dict[str, str] | None = None) -> Run:
    """Run `lmflow ARGS` in `cwd` (so `.lmflow/runs` lands there) and wait for it."""
    done = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**environment(cwd, tag), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(done.returncode, done.stdout, done.stderr, cwd)


def spawn(cwd: Path, *args: str, tag: str) -> subprocess.Popen[str]:
    """Start `lmflow ARGS` in `cwd` without waiting: for tests that signal it mid-run."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=environment(cwd, tag),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_when(
    process: subprocess.Popen[str], ready: Callable[[], bool], waiting_for: str
) -> tuple[str, str]:
    """Wait (up to 60 s) until `ready()`, press Ctrl-C (SIGINT) and return what the process
    wrote; a process still alive after that is killed."""
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{waiting_for} never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def fixture(tag: str, *args: str, **settings: Any) -> str:
    """Our SDK fixture server over stdio, as a YAML flow mapping (JSON is YAML)."""
    server = {
        "command": sys.executable,
        "args": [str(FIXTURE_SERVER), *args],
        "env": {TAG_VARIABLE: tag},
        **settings,
    }
    return json.dumps(server)


def workflow(tmp_path: Path, body: str, name: str = "wf.yaml") -> str:
    path = tmp_path / name
    path.write_text(HEAD + textwrap.dedent(body))
    return path.name


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def offered(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools", ())]


def assert_clean(run: Run) -> None:
    """The user never sees a Python traceback."""
    assert "Traceback" not in run.stderr, run.stderr


# --- a multi-step run over stdio ------------------------------------------------------------

STDIO_WORKFLOW = """
inputs:
  count: {{type: integer}}
  word: {{type: string, default: hello}}
mcp_servers:
  fx: {server}
steps:
  - id: sum
    tool: fx.add
    with: {{a: "{{{{ inputs.count }}}}", b: 0.5}}
  - id: ask
    mcp: [fx]
    tools: [echo, add]
    prompt: "The sum is {{{{ steps.sum.output.result }}}}. Echo {{{{ inputs.word }}}}."
  - id: shout
    prompt: "Shout {{{{ steps.ask.output }}}}"
outputs:
  sum: "{{{{ steps.sum.output.result }}}}"
  answer: "{{{{ steps.shout.output }}}}"
"""
STDIO_SCRIPT = [[("echo", {"text": "hello"})], "echoed hello", "HELLO"]


def test_a_multi_step_run_over_stdio(tmp_path: Path, make_fake_lmstudio: Make, tag: str) -> None:
    lm = make_fake_lmstudio(script=STDIO_SCRIPT)
    file = workflow(tmp_path, STDIO_WORKFLOW.format(server=fixture(tag, "--name", "fx")))
    run = lmflow(tmp_path, "run", file, "-i", "count=3", "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    # Outputs alone on stdout, native values as JSON; progress on stderr.
    assert run.stdout == "sum: 3.5\nanswer: HELLO\n"
    for line in ("▶ sum  fx.add", f"▶ ask  {MODEL}", "round 1: echo", "run succeeded"):
        assert line in run.stderr
    assert "✓ ask  2 round(s), 1 tool call(s)" in run.stderr
    assert "▶" not in run.stdout
    # The model saw the rendered prompt and only the allowed tools, then the tool's result.
    first, second, third = lm.chat_requests
    assert first["messages"][-1] == {"role": "user", "content": "The sum is 3.5. Echo hello."}
    assert offered(first) == ["echo", "add"]
    assert tool_messages(second) == [
        {"role": "tool", "tool_call_id": "call_0_0", "content": "hello"}
    ]
    assert third["messages"] == [{"role": "user", "content": "Shout echoed hello"}]
    assert "tools" not in third
    # The run directory: events, result, and the server's stderr (never the terminal's).
    names = sorted(p.name for p in run.run_dir.iterdir())
    assert names == ["events.jsonl", "mcp-fx.stderr.log", "result.json"]
    assert "fixture server fx starting" in (run.run_dir / "mcp-fx.stderr.log").read_text()
    assert "fixture server" not in run.stderr
    events = run.events()
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
    assert run.result()["outputs"] == {"sum": 3.5, "answer": "HELLO"}
    assert [s["status"] for s in run.result()["steps"]] == ["succeeded"] * 3
    # One end, told alike by the last event and result.json.
    assert [e["type"] for e in events].count("run_finished") == 1
    assert events[-1]["outputs"] == run.result()["outputs"]
    assert events[-1]["status"] == run.result()["status"] == "succeeded"


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--json", "--quiet", "--no-log"], id="json-quiet-no-log"),
        pytest.param(["--verbose", "--log", "custom/events.jsonl"], id="verbose-log-file"),
    ],
)
def test_output_and_log_options(
    flags: list[str], tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=STDIO_SCRIPT)
    file = workflow(tmp_path, STDIO_WORKFLOW.format(server=fixture(tag, "--name", "fx")))
    run = lmflow(tmp_path, "run", file, "-i", "count=1", "--base-url", lm.url, *flags, tag=tag)
    assert run.code == 0, run.stderr
    if "--json" in flags:
        result = json.loads(run.stdout)
        assert result["status"] == "succeeded"
        assert result["outputs"] == {"sum": 1.5, "answer": "HELLO"}
        assert result["inputs"] == {"count": 1, "word": "hello"}
        assert [(s["id"], s["rounds"], s["tool_calls"]) for s in result["steps"]] == [
            ("sum", 0, 1),
            ("ask", 2, 1),
            ("shout", 1, 0),
        ]
        assert run.stderr == ""
        assert not (tmp_path / ".lmflow").exists()
    else:
        assert run.stdout == "sum: 1.5\nanswer: HELLO\n"
        assert "result: hello" in run.stderr  # verbose shows tool results
        assert "round 2 answer: echoed hello" in run.stderr  # ... and answers
        events = run.events(tmp_path / "custom" / "events.jsonl")
        assert [e["type"] for e in events].count("step_finished") == 3
        assert not (run.run_dir / "events.jsonl").exists()


def test_a_failing_tool_step_stops_the_run_with_exit_1(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: bad, tool: fx.fail, with: {{message: disk on fire}}}}
          - {{id: later, needs: bad, prompt: never asked}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 1
    assert (
        "✗ bad failed: tool fx.fail failed: Error executing tool fail: disk on fire" in run.stderr
    )
    assert "\n  hint: `lmflow tools FILE` lists each server's tools" in run.stderr
    assert "- later skipped: step 'bad' failed" in run.stderr
    assert lm.chat_requests == []
    assert [s["status"] for s in run.result()["steps"]] == ["failed", "skipped"]
    assert run.stdout == ""  # no half outputs of a failed run
    assert_clean(run)


# --- other transports and real servers ------------------------------------------------------


def test_streamable_http_server_with_headers_from_env(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    secret = "http-header-secret-42"
    lm = make_fake_lmstudio(script=[[("add", {"a": 1, "b": 2})], "three"])
    with http_fixture(tag=tag) as (url, _):
        file = workflow(
            tmp_path,
            """
            inputs:
              url: {type: string}
            mcp_servers:
              web:
                url: "{{ inputs.url }}"
                headers: {X-Token: "{{ env.FIXTURE_TOKEN }}"}
            steps:
              - {id: token, tool: web.header, with: {key: x-token}}
              - {id: ask, mcp: [web], prompt: "add 1 and 2"}
            outputs:
              seen: "{{ steps.token.output.result == env.FIXTURE_TOKEN }}"
              answer: "{{ steps.ask.output }}"
            """,
        )
        run = lmflow(
            tmp_path,
            "run",
            file,
            "-i",
            f"url={url}",
            "--base-url",
            lm.url,
            tag=tag,
            env={"FIXTURE_TOKEN": secret},
        )
    assert run.code == 0, run.stderr
    assert run.stdout == "seen: true\nanswer: three\n"  # the header reached the server
    assert "header" in offered(lm.chat_requests[0]) and "add" in offered(lm.chat_requests[0])
    assert tool_messages(lm.chat_requests[1])[0]["content"] == "3.0"
    log = (run.run_dir / "events.jsonl").read_text() + (run.run_dir / "result.json").read_text()
    assert secret not in log and "***" in log


def test_mcp_server_time_from_pypi(tmp_path: Path, make_fake_lmstudio: Make, tag: str) -> None:
    convert = {"source_timezone": "Europe/Lisbon", "time": "10:00", "target_timezone": "Asia/Tokyo"}
    lm = make_fake_lmstudio(script=[[("convert_time", convert)], "19:00 in Tokyo"])
    server = {
        "command": sys.executable,
        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        "env": {TAG_VARIABLE: tag},
    }
    file = workflow(
        tmp_path,
        f"""
        inputs:
          tz: {{type: string, default: Europe/Lisbon}}
        mcp_servers:
          time: {json.dumps(server)}
        steps:
          - {{id: now, tool: time.get_current_time, with: {{timezone: "{{{{ inputs.tz }}}}"}}}}
          - id: convert
            mcp: [time]
            prompt: "It is {{{{ steps.now.output.datetime }}}} in {{{{ inputs.tz }}}}."
        outputs:
          tz: "{{{{ steps.now.output.timezone }}}}"
          answer: "{{{{ steps.convert.output }}}}"
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    assert run.stdout == "tz: Europe/Lisbon\nanswer: 19:00 in Tokyo\n"
    assert sorted(offered(lm.chat_requests[0])) == ["convert_time", "get_current_time"]
    assert lm.chat_requests[0]["messages"][-1]["content"].startswith("It is 20")
    fed_back = json.loads(tool_messages(lm.chat_requests[1])[0]["content"])
    assert fed_back["target"]["timezone"] == "Asia/Tokyo"
    assert fed_back["time_difference"] in ("+9.0h", "+8.0h")  # Lisbon in winter or summer


@pytest.mark.npm
def test_npm_filesystem_server_next_to_the_fixture(
    tmp_path: Path, make_fake_lmstudio: Make, filesystem_server_js: Path, tag: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("remember the milk\n")
    lm = make_fake_lmstudio(
        script=[[("list_directory", {"path": str(data)}), ("fx__read_file", {"path": "x"})], "ok"]
    )
    filesystem = {
        "command": "node",
        "args": [str(filesystem_server_js), "{{ inputs.dir }}"],
        "env": {TAG_VARIABLE: tag},
    }
    file = workflow(
        tmp_path,
        f"""
        inputs:
          dir: {{type: string}}
        mcp_servers:
          fs: {json.dumps(filesystem)}
          fx: {fixture(tag)}
        steps:
          - id: read
            tool: fs.read_text_file
            with: {{path: "{{{{ inputs.dir }}}}/notes.txt"}}
          - id: survey
            mcp: [fs, fx]
            tools: [list_directory, read_file]
            prompt: "Notes: {{{{ steps.read.output }}}}"
        outputs:
          notes: "{{{{ steps.read.output }}}}"
        """,
    )
    run = lmflow(tmp_path, "run", file, "-i", f"dir={data}", "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    assert "remember the milk" in run.stdout
    # Both servers offer read_file: both stay reachable under qualified names.
    assert sorted(offered(lm.chat_requests[0])) == [
        "fs__read_file",
        "fx__read_file",
        "list_directory",
    ]
    listing, collided = tool_messages(lm.chat_requests[1])
    assert "[FILE] notes.txt" in listing["content"]
    assert collided["content"] == "fixture read x"


# --- a shared server, and Ctrl-C ------------------------------------------------------------


def test_a_server_shared_by_ten_steps_is_started_once(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    starts = tmp_path / "starts.txt"
    server = counted_fixture_entry(tag, starts)
    steps = []
    script: list[Any] = []
    for i in range(5):  # one after the other, as the script answers in order
        after = f"needs: agent{i - 1}, " if i else ""
        steps.append(f"  - {{id: direct{i}, {after}tool: fx.echo, with: {{text: 'd{i}'}}}}")
        steps.append(f"  - {{id: agent{i}, needs: direct{i}, mcp: [fx], prompt: 'a{i}'}}")
        script += [[("echo", {"text": f"a{i}"})], f"answer {i}"]
    body = f"mcp_servers:\n  fx: {json.dumps(server)}\nsteps:\n" + "\n".join(steps) + "\n"
    lm = make_fake_lmstudio(script=script)
    run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    assert [s["status"] for s in run.result()["steps"]] == ["succeeded"] * 10
    assert [tool_messages(r)[0]["content"] for r in lm.chat_requests[1::2]] == [
        f"a{i}" for i in range(5)
    ]
    assert starts.read_text() == "started\n"
    log = (run.run_dir / "mcp-fx.stderr.log").read_text()
    assert log.count("fixture server fixture starting") == 1


def test_sigint_mid_step_exits_130_and_leaves_no_process(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("sleep", {"seconds": 60})], "never"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
          other: {fixture(tag, "--name", "other")}
        steps:
          - {{id: first, tool: other.echo, with: {{text: hi}}}}
          - {{id: slow, mcp: [fx], prompt: sleep a minute}}
          - {{id: after, needs: slow, prompt: never}}
        """,
    )
    process = spawn(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    events = tmp_path / ".lmflow" / "runs"

    def sleeping() -> bool:
        called = any(
            '"name": "sleep"' in line and '"tool_call"' in line
            for path in events.glob("*/events.jsonl")
            for line in path.read_text().splitlines()
        )
        return called and len(tagged_processes(tag)) == 3  # lmflow and its two servers

    out, err = interrupt_when(process, sleeping, "the sleep call")
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert out == ""
    assert wait_until_gone(tag) == []
    run = Run(130, out, err, tmp_path)
    assert run.result()["status"] == "interrupted"
    finished = [e for e in run.events() if e["type"] == "run_finished"]
    assert [e["status"] for e in finished] == ["interrupted"]


# --- a misbehaving model, through the whole stack -------------------------------------------


def test_every_slip_of_the_model_goes_back_to_it_and_the_run_recovers(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    script = [
        [("echo", '{"text": "unterminated')],  # broken JSON that can be repaired
        [("echo", "text=unterminated")],  # arguments that are not JSON
        [("rm_rf", {"path": "/"})],  # a tool that does not exist
        [("fail", {"message": "disk on fire"})],  # a tool that reports an error
        [("sleep", {"seconds": 5})],  # a call past the server's timeout
        "",  # an empty answer
        "recovered",
        '{"n": "three"}',  # does not match the output schema
        '{"n": 3}',
    ]
    lm = make_fake_lmstudio(script=script)
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag, timeout=1)}
        steps:
          - {{id: fumble, mcp: [fx], max_rounds: 8, prompt: do it}}
          - id: count
            needs: fumble                # the script answers the two steps in turn
            prompt: "How many?"
            output_schema: {{type: object, properties: {{n: {{type: integer}}}}, required: [n]}}
        outputs:
          fumble: "{{{{ steps.fumble.output }}}}"
          n: "{{{{ steps.count.output.n }}}}"
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    assert run.stdout == "fumble: recovered\nn: 3\n"
    requests = lm.chat_requests
    assert len(requests) == len(script)
    replies = [tool_messages(r)[-1]["content"] for r in requests[1:6]]
    assert replies[0] == "unterminated"
    assert "the arguments of echo are not valid JSON" in replies[1]
    assert "there is no tool named 'rm_rf'. Available tools: echo, add" in replies[2]
    assert replies[3] == "error: Error executing tool fail: disk on fire"
    assert "did not answer within 1s" in replies[4]
    assert requests[6]["messages"][-1] == {
        "role": "user",
        "content": "Your last reply was empty. Please answer.",
    }
    schema = requests[7]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["n"]
    repair = requests[8]["messages"][-1]
    assert (
        repair["role"] == "user" and "at $.n: 'three' is not of type 'integer'" in repair["content"]
    )
    notices = [e["kind"] for e in run.events() if e["type"] == "agent_notice"]
    assert notices == [
        "repaired_arguments",
        "invalid_arguments",
        "unknown_tool",
        "empty_answer",
        "schema_repair",
    ]
    assert (
        "note: unknown_tool" in run.stderr
        and "tool error: error: Error executing tool fail: disk on fire" in run.stderr
    )


def test_running_out_of_rounds_fails_the_step_with_exit_1(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("echo", {"text": "again"})]] * 2)
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: loop, mcp: [fx], max_rounds: 2, prompt: go}}
        outputs:
          out: "{{{{ steps.loop.output }}}}"
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 1
    assert "✗ loop failed: no final answer after 2 rounds" in run.stderr
    assert len(lm.chat_requests) == 2
    assert run.result()["status"] == "failed"
    assert_clean(run)


def test_a_tool_that_crashes_its_server_fails_the_step_with_exit_1(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("crash", {})], "unreachable"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: boom, mcp: [fx], prompt: crash it}}
          - {{id: after, needs: boom, prompt: never}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, "--json", tag=tag)
    assert run.code == 1
    result = json.loads(run.stdout)
    boom, after = result["steps"]
    assert boom["status"] == "failed"
    assert boom["error"].startswith("MCP server 'fx' stopped")
    assert "command: " in boom["error"] and str(FIXTURE_SERVER) in boom["error"]
    assert after["status"] == "skipped"
    assert len(lm.chat_requests) == 1
    # The failure says how to go on, on the terminal and in the log.
    assert "✗ boom failed: MCP server 'fx' stopped" in run.stderr
    assert f"\n  hint: {MCPServerError.default_hint}\n" in run.stderr
    finished = [e for e in run.events() if e["type"] == "step_finished"]
    assert [e.get("hint") for e in finished] == [MCPServerError.default_hint, None]
    assert_clean(run)


# --- bad input and an environment that is not ready -----------------------------------------


def test_a_missing_required_input_exits_2_naming_it(tmp_path: Path) -> None:
    file = workflow(
        tmp_path,
        """
        inputs:
          path: {type: string, description: Directory to survey}
          top: {type: integer, default: 3}
        steps:
          - {id: s, prompt: "{{ inputs.path }} {{ inputs.top }}"}
        """,
    )
    run = lmflow(tmp_path, "run", file, "-i", "top=many", "--base-url", down_url())
    assert run.code == 2
    assert "input 'path' is required (string: Directory to survey)" in run.stderr
    assert "input 'top': 'many' is not an integer" in run.stderr
    assert "hint: pass inputs as -i name=value" in run.stderr
    assert run.stdout == ""
    assert_clean(run)


def test_an_input_without_equals_sign_exits_2(tmp_path: Path) -> None:
    file = workflow(tmp_path, "steps:\n  - {id: s, prompt: x}\n")
    run = lmflow(tmp_path, "run", file, "-i", "path", "--base-url", down_url())
    assert run.code == 2
    assert "input 'path' is not key=value" in run.stderr
    assert_clean(run)


def test_a_model_the_server_lacks_exits_3_listing_the_available_ones(
    tmp_path: Path, fake_lmstudio: FakeLMStudio
) -> None:
    file = workflow(tmp_path, "steps:\n  - {id: s, model: acme/nope-7b, prompt: x}\n")
    run = lmflow(tmp_path, "run", file, "--base-url", fake_lmstudio.url)
    assert run.code == 3
    # The same words as `lmflow validate`, behind the position in the file.
    assert f"wf.yaml:5:20: model 'acme/nope-7b' is not on {fake_lmstudio.url}" in run.stderr
    assert "available: " in run.stderr and MODEL in run.stderr
    assert fake_lmstudio.chat_requests == []
    assert_clean(run)


def test_servers_boot_during_the_model_check_and_go_when_it_fails(
    tmp_path: Path, fake_lmstudio: FakeLMStudio, tag: str
) -> None:
    """Stdio servers are spawned before the model check, so their start-up overlaps it; a
    check that fails stops them, also one that ignores end-of-input and SIGTERM."""
    marker = tmp_path / "booted"
    command = f"echo up > {marker}; exec {sys.executable} {FIXTURE_SERVER} --linger"
    server = json.dumps({"command": "sh", "args": ["-c", command], "env": {TAG_VARIABLE: tag}})
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {server}
        steps:
          - {{id: s, model: acme/nope-7b, mcp: [fx], prompt: x}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", fake_lmstudio.url, tag=tag)
    assert run.code == 3
    assert "model 'acme/nope-7b' is not on" in run.stderr
    assert marker.read_text() == "up\n"  # spawned although the run never got past the check
    assert tagged_processes(tag) == []
    assert_clean(run)


def test_lm_studio_down_exits_3_naming_the_url(tmp_path: Path) -> None:
    url = down_url()
    file = workflow(tmp_path, "steps:\n  - {id: s, prompt: x}\n")
    run = lmflow(tmp_path, "run", file, "--base-url", url)
    assert run.code == 3
    assert url in run.stderr
    assert_clean(run)


def test_a_server_that_will_not_start_exits_3_before_any_step(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=["unused"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          good: {fixture(tag, "--name", "good")}
          broken: {fixture(tag, "--crash-on-start")}
        steps:
          - {{id: a, mcp: [good], prompt: x}}
          - {{id: b, mcp: [broken], prompt: y}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 3
    assert "MCP server 'broken' would not start" in run.stderr
    assert f"command: {sys.executable} {FIXTURE_SERVER} --crash-on-start" in run.stderr
    assert "fatal: configured to crash on start" in run.stderr  # the tail of its stderr
    assert lm.chat_requests == []
    assert not any(e["type"] == "step_started" for e in run.events())
    assert run.result()["status"] == "error"
    assert_clean(run)


@pytest.mark.parametrize("command", ["run", "tools"])
def test_a_secret_in_the_command_of_a_server_that_will_not_start_is_never_shown(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str, command: str
) -> None:
    secret = "hunter2-secret-value"
    lm = make_fake_lmstudio(script=["unused"])
    # The secret is in its command line, and the server writes it to stderr before it dies.
    args = ["--name", "{{ env.MY_SECRET }}", "--crash-on-start"]
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          broken: {fixture(tag, *args)}
        steps:
          - {{id: a, mcp: [broken], prompt: x}}
        """,
    )
    options = ["--base-url", lm.url] if command == "run" else []
    run = lmflow(tmp_path, command, file, *options, tag=tag, env={"MY_SECRET": secret})
    assert run.code == 3
    assert "MCP server 'broken' would not start" in run.stderr
    assert "--name *** --crash-on-start" in run.stderr
    assert "fixture server *** starting" in run.stderr  # the tail of its stderr
    assert secret not in run.stdout + run.stderr
    for written in (tmp_path / ".lmflow").rglob("*"):
        assert not written.is_file() or secret not in written.read_text()
    if command == "run":  # the server's own stderr log is kept, masked
        (log,) = (tmp_path / ".lmflow").rglob("mcp-broken.stderr.log")
        assert "fixture server *** starting" in log.read_text()
    assert_clean(run)


def test_an_allow_list_naming_a_missing_tool_exits_3_before_any_step(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=["unused"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: a, prompt: x}}
          - {{id: b, mcp: [fx], tools: [echo, ecko], prompt: y}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 3
    assert "no MCP server of the step (fx) offers 'ecko'" in run.stderr
    assert "did you mean" in run.stderr and "fx.echo" in run.stderr
    assert lm.chat_requests == []
    assert_clean(run)


# --- lmflow tools, lmflow agent -------------------------------------------------------------


def test_tools_lists_every_tool_of_every_server_with_its_description(
    tmp_path: Path, tag: str
) -> None:
    time_server = {
        "command": sys.executable,
        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        "env": {TAG_VARIABLE: tag},
    }
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
          time: {json.dumps(time_server)}
        steps:
          - {{id: a, mcp: [fx], prompt: x}}
        """,
    )
    run = lmflow(tmp_path, "tools", file, tag=tag)
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "fx (9 tools)" in lines
    # Each tool with its arguments (`?`: optional) and the first line of its description.
    assert "  fx.echo(text: string)  Return the text unchanged." in lines
    assert any(
        line.startswith("  time.convert_time(source_timezone: string, time: string, ")
        for line in lines
    ), lines
    assert "time (2 tools)" in lines  # a declared server no step uses is listed too
    assert not (tmp_path / ".lmflow").exists()
    as_json = json.loads(lmflow(tmp_path, "tools", file, "--json", tag=tag).stdout)
    (add,) = [tool for tool in as_json["fx"] if tool["name"] == "add"]
    assert add["arguments"] == "a: number, b: number"
    assert add["input_schema"]["required"] == ["a", "b"]


def test_agent_runs_the_engine_once_with_an_inline_server(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("echo", {"text": "pong"})], "The echo said pong."])
    inline = f"fx=env {TAG_VARIABLE}={tag} {sys.executable} {FIXTURE_SERVER}"
    run = lmflow(
        tmp_path,
        "agent",
        "--server",
        inline,
        "--mcp",
        "fx",
        "--model",
        MODEL,
        "--base-url",
        lm.url,
        "Echo pong.",
        tag=tag,
    )
    assert run.code == 0, run.stderr
    assert run.stdout == "The echo said pong.\n"
    first, second = lm.chat_requests
    assert first["model"] == MODEL
    assert first["messages"] == [{"role": "user", "content": "Echo pong."}]
    assert "echo" in offered(first)
    assert tool_messages(second)[0]["content"] == "pong"
    assert "round 1: echo" in run.stderr
    assert (run.run_dir / "mcp-fx.stderr.log").exists()


def test_agent_takes_the_task_and_system_prompt_literally(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(script=["Jinja prints it."])
    task = "Explain {{ name }} and {% raw %} in Jinja."
    run = lmflow(
        tmp_path, "agent", "--model", MODEL, "--base-url", lm.url, "--system", "{{ x }}", task
    )
    assert run.code == 0, run.stderr
    (request,) = lm.chat_requests
    assert request["messages"] == [
        {"role": "system", "content": "{{ x }}"},
        {"role": "user", "content": task},
    ]


def test_an_unclosed_quote_in_an_inline_server_exits_2(tmp_path: Path) -> None:
    run = lmflow(tmp_path, "agent", "--server", "x='oops", "--model", MODEL, "task")
    assert run.code == 2
    assert '--server "x=\'oops"' in run.stderr and "No closing quotation" in run.stderr
    assert_clean(run)


def test_an_invalid_workflow_is_explained_line_by_line(tmp_path: Path) -> None:
    file = workflow(tmp_path, "steps:\n  - id: a\n    promt: hi\n")
    run = lmflow(tmp_path, "run", file)
    assert run.code == 2
    assert f"{file}:6:5: error: unknown key 'promt' in step 'a' [unknown-key]" in run.stderr
    assert "did you mean 'prompt' or 'prompt_from' or 'prompt_file'?" in run.stderr
    assert_clean(run)


def test_agent_takes_servers_and_aliases_from_a_workflow(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("add", {"a": 2, "b": 3})], "2 + 3 = 5"])
    file = workflow(
        tmp_path,
        f"""
        models: {{coder: {MODEL}}}
        mcp_servers:
          fx: {fixture(tag)}
          unused: {fixture(tag, "--name", "unused")}
        steps:
          - {{id: a, model: coder, prompt: x}}
        """,
    )
    run = lmflow(
        tmp_path, "agent", "--from", file, "--mcp", "fx", "--model", "coder",
        "--base-url", lm.url, "Add 2 and 3.", tag=tag,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert run.stdout == "2 + 3 = 5\n"
    first, second = lm.chat_requests
    assert first["model"] == MODEL  # the alias of the --from workflow resolved
    assert "add" in offered(first)
    assert tool_messages(second)[0]["content"] == "5.0"  # the fixture's add() works in floats
    assert_clean(run)


def test_a_secret_is_masked_before_any_template_has_read_it(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    """The model repeats the secret in step one; only step two's prompt reads env.*."""
    secret = "s3cr3t-value-for-the-log"
    lm = make_fake_lmstudio(script=[f"the token is {secret}", "ok"])
    file = workflow(
        tmp_path,
        """
        steps:
          - {id: first, prompt: "What is the token?"}
          - {id: second, prompt: "Use {{ env.MY_SECRET }} with {{ steps.first.output }}"}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, env={"MY_SECRET": secret})
    assert run.code == 0, run.stderr
    assert secret not in run.stderr
    written = [p for p in (tmp_path / ".lmflow").rglob("*") if p.is_file()]
    assert written and all(secret not in p.read_text() for p in written)
    assert "the token is ***" in (run.run_dir / "events.jsonl").read_text()


# --- hostile inputs and settings (issue 8): a message and the documented code, no traceback ---


@pytest.mark.parametrize("command", ["run", "tools"])
def test_an_unset_variable_in_server_settings_exits_3_naming_it(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str, command: str
) -> None:
    lm = make_fake_lmstudio(script=[])
    server = json.loads(fixture(tag))
    server["env"]["TOKEN"] = "{{ env.LMFLOW_TEST_UNSET_TOKEN }}"
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          gh: {json.dumps(server)}
        steps:
          - {{id: a, mcp: [gh], prompt: x}}
        """,
    )
    extra = ["--base-url", lm.url] if command == "run" else []
    run = lmflow(tmp_path, command, file, *extra, tag=tag)
    assert run.code == 3, run.stderr
    assert (
        "error: MCP server 'gh' setting env.TOKEN reads environment variable "
        "LMFLOW_TEST_UNSET_TOKEN, which is not set"
    ) in run.stderr
    assert "hint: set it before the run: export LMFLOW_TEST_UNSET_TOKEN=..." in run.stderr
    assert lm.chat_requests == []
    assert_clean(run)
    if command == "run":
        events = run.events()
        assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "error"


def test_a_tool_argument_that_is_not_json_fails_the_step_not_the_process(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: echo, tool: fx.echo, with: {{text: "{{{{ range(3) }}}}"}}}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 1, run.stderr
    assert "✗ echo failed: with.text is a range value, which is not JSON data" in run.stderr
    finished = [e for e in run.events() if e["type"] == "step_finished"]
    assert [(e["step"], e["status"]) for e in finished] == [("echo", "failed")]
    assert run.events()[-1]["type"] == "run_finished"
    assert_clean(run)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ALIAS_LOOP, ":1:4: an alias (*name) is used inside the value its anchor"),
        (ALIAS_BOMB, "document expands to more than 200,000 nodes"),
        ("a: " + nested_list(900) + "\n", "YAML nesting is deeper than 64 levels"),
    ],
)
def test_a_hostile_inputs_file_exits_2_before_the_run_starts(
    tmp_path: Path, text: str, message: str
) -> None:
    file = workflow(tmp_path, "inputs:\n  a: {type: array}\nsteps:\n  - {id: s, prompt: x}\n")
    (tmp_path / "inputs.yaml").write_text(text)
    run = lmflow(tmp_path, "run", file, "--inputs", "inputs.yaml", "--base-url", down_url())
    assert run.code == 2
    assert "inputs.yaml:" in run.stderr and message in run.stderr
    assert not (tmp_path / ".lmflow").exists()  # no run log without an end
    assert_clean(run)


def test_deep_json_on_the_command_line_exits_2(tmp_path: Path) -> None:
    file = workflow(tmp_path, "inputs:\n  a: {type: array}\nsteps:\n  - {id: s, prompt: x}\n")
    run = lmflow(tmp_path, "run", file, "-i", "a=" + nested_list(1000), "--base-url", down_url())
    assert run.code == 2
    assert "input 'a': JSON nesting is deeper than 64 levels" in run.stderr
    assert_clean(run)
