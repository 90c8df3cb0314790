"""The run log: a byte-stable snapshot view, a readable truncated log, --log and --no-log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.agent import AgentLimits, AgentTask, run_agent
from runner.chat import ChatRequest, ChatResponse, ToolCall, ToolResult, ToolSpec, Usage
from runner.errors import LmflowError
from runner.runlog import Event, RunLog, new_run_id, read_events, snapshot_view


class ScriptedModel:
    """Calls `slow` and `fast` in one turn, then answers; the tool-call ids are its own."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        self.turn = 0

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.turn += 1
        if self.turn == 1:
            calls = (
                ToolCall(self.ids[0], "slow", '{"time": "10:00"}'),
                ToolCall(self.ids[1], "fast", "{}"),
            )
            return ChatResponse(None, calls, "tool_calls", usage=Usage(10, 2))
        return ChatResponse("done", finish_reason="stop", usage=Usage(20, 1))


class TimedTools:
    """Two tools whose calls finish in the order the test chooses."""

    def __init__(self, slow_first: bool) -> None:
        self.delays = {"slow": 0.0 if slow_first else 0.05, "fast": 0.05 if slow_first else 0.0}
        self.finished: list[str] = []

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec(name, name, {"type": "object"}) for name in self.delays]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        await asyncio.sleep(self.delays[name])
        self.finished.append(name)
        # A result that happens to equal a call id (of the first run) is content, not an id.
        return ToolResult("call_abc" if name == "fast" else "slept")


def events_of(ids: Sequence[str], slow_first: bool) -> tuple[list[dict[str, Any]], list[str]]:
    log = RunLog(new_run_id())
    events: list[Event] = []
    log.subscribe(events.append)
    tools = TimedTools(slow_first)
    task = AgentTask(model="m", prompt="go", temperature=0.0)
    asyncio.run(run_agent(ScriptedModel(ids), task, tools, AgentLimits(), log.for_step("s")))
    return [json.loads(json.dumps(e.as_dict())) for e in events], tools.finished


def test_same_exchanges_give_a_byte_identical_view() -> None:
    first, order_one = events_of(["call_abc", "call_def"], slow_first=True)
    second, order_two = events_of(["7f3a9", "x-1"], slow_first=False)
    assert order_one != order_two  # the calls really finished in different orders
    assert first != second  # and the raw logs differ (ids, times, run ids)

    one = json.dumps(snapshot_view(first), sort_keys=True)
    two = json.dumps(snapshot_view(second), sort_keys=True)
    assert one == two

    view = snapshot_view(first)
    assert all(not {"seq", "time", "run_id"} & set(event) for event in view)
    calls = [e for e in view if e["type"] == "tool_call"]
    assert [c["id"] for c in calls] == ["call-1", "call-2"]
    assert calls[0]["arguments"] == {"time": "10:00"}  # an argument named `time` stays
    results = [e["content"] for e in view if e["type"] == "tool_result"]
    assert results == ["slept", "call_abc"]  # content equal to an id is not renumbered
    second_request = [e for e in view if e["type"] == "llm_request"][1]
    tool_messages = [m for m in second_request["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call-1", "call-2"]


def test_placeholders_replace_machine_paths() -> None:
    events = [{"type": "run_started", "path": "/home/ada/flows/wf.yaml", "duration": 1.5}]
    view = snapshot_view(events, {"/home/ada/flows": "<workflow.dir>", "/home/ada": "<home>"})
    assert view == [{"type": "run_started", "path": "<workflow.dir>/wf.yaml"}]


def test_a_truncated_events_file_keeps_its_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq": 1, "type": "run_started"}\n{"seq": 2, "type": "step_st')
    read = read_events(path)
    assert read.events == [{"seq": 1, "type": "run_started"}]
    assert read.truncated_line == 2

    path.write_text('{"seq": 1}\nnot json\n{"seq": 3}\n')
    with pytest.raises(LmflowError, match=r"events.jsonl:2: the run log is damaged"):
        read_events(path)


CASSETTE = """\
version: 1
workflow: tiny
exchanges:
- n: 1
  kind: llm
  step: say
  round: 1
  request:
    model: m/x
    messages:
    - {role: user, content: Say hi}
  response: {content: hi, finish_reason: stop}
"""
WORKFLOW = """\
version: 1
name: tiny
defaults: {model: m/x}
steps:
  - {id: say, prompt: Say hi}
outputs: {said: "{{ steps.say.output }}"}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(WORKFLOW)
    (tmp_path / "tiny.cassette.yaml").write_text(CASSETTE)
    return tmp_path


def lmflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )


def test_log_file_option_writes_the_events_there(tiny: Path) -> None:
    done = lmflow("run", "tiny.yaml", "--replay", "tiny.cassette.yaml", "--log", "my.jsonl",
                  cwd=tiny)  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = read_events(tiny / "my.jsonl").events
    assert events[0]["type"] == "run_started"
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "succeeded"
    (run_dir,) = (tiny / ".lmflow" / "runs").iterdir()
    assert not (run_dir / "events.jsonl").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "succeeded" and result["outputs"] == {"said": "hi"}
    assert {"steps", "usage", "duration", "inputs"} <= set(result)
    assert result["steps"][0]["rounds"] == 1


def test_no_log_writes_nothing(tiny: Path) -> None:
    done = lmflow("run", "tiny.yaml", "--replay", "tiny.cassette.yaml", "--no-log", cwd=tiny)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi\n"
    assert not (tiny / ".lmflow").exists()


def test_runs_show_events_on_a_truncated_log(tiny: Path) -> None:
    assert lmflow("run", "tiny.yaml", "--replay", "tiny.cassette.yaml", cwd=tiny).returncode == 0
    (run_dir,) = (tiny / ".lmflow" / "runs").iterdir()
    log = run_dir / "events.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])

    done = lmflow("runs", "show", run_dir.name, "--events", cwd=tiny)

    assert done.returncode == 0
    assert "Traceback" not in done.stderr
    assert f"line {len(lines)} of" in done.stderr and "is cut off" in done.stderr
    shown = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(shown) == len(lines) - 1


# --- the run's end, options, secrets ----------------------------------------------------------


def test_notices_about_this_machine_stay_out_of_the_snapshot_view() -> None:
    events = [
        {"seq": 1, "type": "run_started", "workflow": "w"},
        {"seq": 2, "type": "notice", "rule": "model-not-loaded", "message": "loads on use"},
        {"seq": 3, "type": "run_finished", "status": "succeeded"},
    ]
    assert [e["type"] for e in snapshot_view(events)] == ["run_started", "run_finished"]


def test_the_direct_call_of_a_tool_step_keeps_its_id() -> None:
    events = [
        {"type": "tool_call", "step": "a", "id": "direct", "name": "fs.read"},
        {"type": "llm_response", "step": "b", "tool_calls": [{"id": "x9", "name": "t"}]},
        {"type": "tool_call", "step": "b", "id": "x9", "name": "t"},
    ]
    view = snapshot_view(events)
    assert [view[0]["id"], view[1]["tool_calls"][0]["id"], view[2]["id"]] == [
        "direct",
        "call-1",
        "call-1",
    ]


def test_a_run_log_that_cannot_be_written_is_a_command_line_error(tiny: Path) -> None:
    done = lmflow("run", "tiny.yaml", "--replay", "tiny.cassette.yaml", "--log",
                  "/proc/no-such-dir/events.jsonl", cwd=tiny)  # fmt: skip
    assert done.returncode == 2
    assert "cannot write the run log to /proc/no-such-dir/events.jsonl" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "flags",
    [["--base-url", "http://127.0.0.1:9"], ["--refresh"], ["--no-log", "--log", "x.jsonl"]],
)
def test_options_a_replay_would_ignore_are_refused(tiny: Path, flags: list[str]) -> None:
    done = lmflow("run", "tiny.yaml", "--replay", "tiny.cassette.yaml", *flags, cwd=tiny)
    assert done.returncode == 2
    assert "cannot be used with --replay" in done.stderr or "exclude each other" in done.stderr
    assert not (tiny / ".lmflow").exists()


def test_an_existing_cassette_is_refused_before_the_run_starts(tiny: Path) -> None:
    done = lmflow("run", "tiny.yaml", "--record", "tiny.cassette.yaml", cwd=tiny)
    assert done.returncode == 2
    assert "already exists" in done.stderr and "--rerecord" in done.stderr
    assert not (tiny / ".lmflow").exists()  # no run was started, so none is in the history
    assert (tiny / "tiny.cassette.yaml").read_text() == CASSETTE


def test_the_last_event_and_result_json_tell_the_same_end(tiny: Path) -> None:
    """A replay that misses ends the run with exit 3: both records say `error`."""
    (tiny / "tiny.yaml").write_text(WORKFLOW.replace("Say hi", "Say hello"))
    done = lmflow("run", "tiny.yaml", "--replay", "tiny.cassette.yaml", cwd=tiny)
    assert done.returncode == 3
    (run_dir,) = (tiny / ".lmflow" / "runs").iterdir()
    events = read_events(run_dir / "events.jsonl").events
    result = json.loads((run_dir / "result.json").read_text())
    assert [e["type"] for e in events].count("run_finished") == 1
    assert events[-1]["status"] == result["status"] == "error"
    assert events[-1]["error"] == result["error"]
    assert result["steps"][0]["id"] == "say"  # the steps that ran are kept


def test_run_ids_sort_by_start_time_within_a_second() -> None:
    """`--resume last` and `lmflow runs list` take the newest run by its id."""
    ids = []
    for _ in range(20):
        ids.append(new_run_id())
        time.sleep(0.002)
    assert sorted(ids) == ids
