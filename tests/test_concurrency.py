"""The concurrent engine end to end: steps that overlap, limits, for_each, failures, replay of
a concurrent recording, Ctrl-C while several steps run.

LM Studio is the real loopback fake with a latency on chat completions; it counts the
requests it answers at once (`peak_in_flight`), which is how these tests see overlap
without timing anything. MCP servers are real processes (our SDK fixture server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from fakes.lmstudio import FakeLMStudio, down_url
from mcp_support import new_tag, tagged_processes, wait_until_gone
from test_run_cli import Run, fixture, interrupt_when, lmflow, spawn, workflow

from runner.chat import ToolResult
from runner.limits import limit_calls
from runner.runlog import snapshot_view
from runner.spec import load_workflow

Make = Callable[..., FakeLMStudio]
LATENCY = 0.3


@pytest.fixture
def tag() -> Iterator[str]:
    value = new_tag()
    yield value
    assert wait_until_gone(value) == []


def fan_out(tmp_path: Path, width: int, concurrency: int, extra: str = "") -> str:
    """A workflow file of `width` independent steps and a join that reads them all."""
    steps = "".join(f"  - {{id: s{i}, prompt: 'part {i}'}}\n" for i in range(width))
    reads = " ".join(f"{{{{ steps.s{i}.output }}}}" for i in range(width))
    (tmp_path / "fan.yaml").write_text(
        "version: 1\nname: fan\n"
        f"defaults: {{model: qwen/qwen3-coder-30b, concurrency: {concurrency}}}\n"
        f"steps:\n{steps}  - {{id: join, prompt: 'all: {reads}'}}\n{extra}"
        "outputs:\n  all: '{{ steps.join.output }}'\n"
    )
    return "fan.yaml"


def test_independent_steps_run_at_the_same_time(tmp_path: Path, make_fake_lmstudio: Make) -> None:
    lm = make_fake_lmstudio(chat_delay=LATENCY)
    run = lmflow(tmp_path, "run", fan_out(tmp_path, 6, 8), "--base-url", lm.url)
    assert run.code == 0, run.stderr
    assert lm.peak_in_flight == 6  # all six at once; the join waited for them
    join = lm.chat_requests[-1]["messages"][-1]["content"]
    assert join == "all: " + " ".join(f"echo: part {i}" for i in range(6))
    # one line per start and end on the console, never a fragment of another step's line
    lines = run.stderr.splitlines()
    assert sum(line.startswith("▶ s") for line in lines) == 6
    assert sum(line.startswith("✓ s") for line in lines) == 6


def test_defaults_concurrency_bounds_the_steps_in_flight(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(chat_delay=LATENCY)
    run = lmflow(tmp_path, "run", fan_out(tmp_path, 6, 2), "--base-url", lm.url)
    assert run.code == 0, run.stderr
    assert lm.peak_in_flight == 2


FOR_EACH = """
inputs:
  topics: {type: array, default: [ants, bees, cats, dogs, eels, fish]}
steps:
  - id: each
    for_each: "{{ inputs.topics }}"
    concurrency: 3
    prompt: "{{ loop.index }}/{{ loop.length }}: {{ item }}"
outputs:
  all: "{{ steps.each.output }}"
"""


def test_for_each_runs_items_concurrently_and_keeps_their_order(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(chat_delay=LATENCY)
    run = lmflow(tmp_path, "run", workflow(tmp_path, FOR_EACH), "--base-url", lm.url, "--json")
    assert run.code == 0, run.stderr
    assert lm.peak_in_flight == 3
    topics = ["ants", "bees", "cats", "dogs", "eels", "fish"]
    assert run.result()["outputs"]["all"] == [
        f"echo: {i + 1}/6: {topic}" for i, topic in enumerate(topics)
    ]
    requests = [e for e in run.events() if e["type"] == "llm_request"]
    assert sorted(e["item"] for e in requests) == list(range(6))
    assert all(e["step"] == "each" for e in requests)
    finished = [e for e in run.events() if e["type"] == "item_finished"]
    assert sorted((e["item"], e["status"]) for e in finished) == [
        (i, "succeeded") for i in range(6)
    ]


TOOL_FOR_EACH = """
inputs:
  numbers: {{type: array, default: [1, 2, "three", 4]}}
mcp_servers:
  fx: {server}
steps:
  - id: double
    for_each: "{{{{ inputs.numbers }}}}"
    tool: fx.add
    with: {{a: "{{{{ item }}}}", b: "{{{{ item }}}}"}}
  - id: after
    needs: double
    prompt: never asked
"""


def test_a_for_each_over_a_real_tool_names_the_items_that_failed(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio()
    body = TOOL_FOR_EACH.format(server=fixture(tag, max_concurrent_calls=1))
    run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    assert run.code == 1, run.stderr
    steps = {s["id"]: s for s in run.result()["steps"]}
    assert steps["double"]["status"] == "failed"
    assert steps["double"]["error"].startswith("item(s) 2 of 4 failed: tool fx.add failed")
    assert steps["double"]["output"] == [{"result": 2.0}, {"result": 4.0}, None, {"result": 8.0}]
    assert steps["after"] == {
        **steps["after"],
        "status": "skipped",
        "reason": "step 'double' failed",
    }
    assert lm.chat_requests == []


def test_continue_on_error_keeps_the_items_that_succeeded(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio()
    body = TOOL_FOR_EACH.format(server=fixture(tag)).replace(
        "    tool: fx.add", "    continue_on_error: true\n    tool: fx.add"
    )
    run = lmflow(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    steps = {s["id"]: s for s in run.result()["steps"]}
    assert steps["double"]["status"] == "succeeded"
    assert steps["double"]["output"][2] is None
    assert steps["after"]["status"] == "succeeded"


def test_a_concurrent_recording_replays_to_the_same_outputs_and_snapshot(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    lm = make_fake_lmstudio(chat_delay=0.1)
    each = """  - id: each
    for_each: [same, same, other]
    prompt: "{{ item }}"
"""
    file = fan_out(tmp_path, 5, 8, extra=each)
    cassette = tmp_path / "c.yaml"
    recorded = lmflow(tmp_path, "run", file, "--base-url", lm.url, "--record", str(cassette))
    assert recorded.code == 0, recorded.stderr
    assert lm.peak_in_flight >= 5
    first = recorded.run_dir
    replayed = lmflow(
        tmp_path, "run", file, "--replay", str(cassette), env={"LMFLOW_BASE_URL": down_url()}
    )
    assert replayed.code == 0, replayed.stderr
    second = next(p for p in (tmp_path / ".lmflow" / "runs").iterdir() if p != first)
    assert replayed.stdout == recorded.stdout

    def view(run_dir: Path) -> list[dict[str, Any]]:
        return snapshot_view(Run(0, "", "", tmp_path).events(run_dir / "events.jsonl"))

    assert view(second) == view(first)


def interrupted_while_calling(
    tmp_path: Path, body: str, lm: FakeLMStudio, tag: str, *, calls: int
) -> Run:
    """`lmflow run` stopped by Ctrl-C once `calls` tool calls are under way: exit 130, no
    traceback, no process left."""
    process = spawn(tmp_path, "run", workflow(tmp_path, body), "--base-url", lm.url, tag=tag)
    events = tmp_path / ".lmflow" / "runs"

    def calling() -> bool:
        logs = list(events.glob("*/events.jsonl")) if events.exists() else []
        return bool(logs) and logs[0].read_text().count('"tool_call"') == calls

    out, err = interrupt_when(process, calling, f"{calls} tool calls")
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert wait_until_gone(tag) == []
    return Run(130, out, err, tmp_path)


def test_ctrl_c_while_several_steps_run_stops_them_all(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio()
    body = f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: a, tool: fx.sleep, with: {{seconds: 30}}}}
          - {{id: b, tool: fx.sleep, with: {{seconds: 30}}}}
          - {{id: c, tool: fx.sleep, with: {{seconds: 30}}}}
          - {{id: d, needs: [a, b, c], prompt: never asked}}
        """
    run = interrupted_while_calling(tmp_path, body, lm, tag, calls=3)
    assert tagged_processes(tag) == []
    log = run.events()
    assert [e["type"] for e in log][-1] == "run_finished"
    assert log[-1]["status"] == "interrupted"
    assert sorted(e["step"] for e in log if e["type"] == "tool_call") == ["a", "b", "c"]
    assert not any(e.get("step") == "d" and e["type"] == "step_started" for e in log)
    assert lm.chat_requests == []
    # a consistent log: each started step has its end, telling that the stop cut it short
    ends = {e["step"]: e for e in log if e["type"] == "step_finished"}
    assert {s: e["status"] for s, e in ends.items()} == dict.fromkeys("abc", "interrupted")
    assert all(e["reason"] == "the run was stopped while it ran" for e in ends.values())
    assert {s["id"]: s["status"] for s in run.result()["steps"]} == dict.fromkeys(
        "abc", "interrupted"
    )


def test_ctrl_c_during_for_each_items_ends_each_started_item_and_the_step(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio()
    body = f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - id: naps
            for_each: "{{{{ [30, 30, 30] }}}}"
            concurrency: 2
            tool: fx.sleep
            with: {{seconds: "{{{{ item }}}}"}}
        """
    log = interrupted_while_calling(tmp_path, body, lm, tag, calls=2).events()
    started = sorted(e["item"] for e in log if e["type"] == "item_started")
    ended = {e["item"]: e["status"] for e in log if e["type"] == "item_finished"}
    assert started == [0, 1]  # the third item waited for a slot and never started
    assert ended == {0: "interrupted", 1: "interrupted"}
    (end,) = [e for e in log if e["type"] == "step_finished"]
    assert end["status"] == "interrupted"
    assert log[-1]["type"] == "run_finished" and log[-1]["status"] == "interrupted"


class CountingSource:
    """A tool source that counts the calls it serves at once (the seam limits.py wraps)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0

    def tools(self, server: str) -> list[Any]:
        return []

    async def call_tool(self, server: str, tool: str, arguments: Any) -> ToolResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await anyio.sleep(0.01)
        self.in_flight -= 1
        return ToolResult("ok")


@pytest.mark.parametrize(("limit", "peak"), [(None, 5), (1, 1), (2, 2)])
def test_max_concurrent_calls_bounds_the_calls_to_one_server(
    tmp_path: Path, limit: int | None, peak: int
) -> None:
    setting = f", max_concurrent_calls: {limit}" if limit else ""
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\nmcp_servers:\n"
        f"  db: {{command: db{setting}}}\n  other: {{command: other}}\n"
        "steps:\n  - {id: q, tool: db.query}\n"
    )
    source = CountingSource()
    tools = limit_calls(load_workflow(path), cast(Any, source))

    async def calls() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(tools.call_tool, "db", "query", {})

    anyio.run(calls)
    assert source.peak == peak
