"""Large tool results: the model gets `max_result_chars` of one and a note; the run directory
keeps the whole of it; events.jsonl stays small; record and replay agree. Real runs: the fake
LM Studio and the fixture MCP server (its `blob` tool answers with N characters)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import FakeLMStudio, FakeModel
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, new_tag, wait_until_gone

from runner.chat import ToolResult
from runner.results import capped, result_file
from runner.runlog import Event, snapshot_view
from runner.runtime import RunOptions, run_workflow
from runner.spec import check_file, load_workflow
from runner.spec.model import DEFAULT_MAX_RESULT_CHARS
from runner.stdio_server import LineSplitter

MODEL = "qwen/qwen3-4b"
LINE = "0123456789abcdef" * 4 + "\n"


def blob(characters: int) -> str:
    """What the fixture's `blob` tool answers."""
    whole, rest = divmod(characters, len(LINE))
    return LINE * whole + LINE[:rest]


def note(cut: int, total: int, text: str) -> str:
    return (
        f"\n[... {cut:,} more characters cut (the result has {total:,}); "
        f"the full result is in {result_file(text)} beside the run log]"
    )


@pytest.fixture
def tag(monkeypatch: pytest.MonkeyPatch) -> Any:
    value = new_tag()
    monkeypatch.setenv(TAG_VARIABLE, value)  # the servers inherit it: leaks are findable
    yield value
    assert wait_until_gone(value) == []


def write_workflow(tmp_path: Path, *, server: str = "", steps: str) -> Path:
    path = tmp_path / "large.yaml"
    path.write_text(
        "\n".join(
            [
                "version: 1",
                "name: large",
                f"defaults: {{model: {MODEL}}}",
                "mcp_servers:",
                "  fx:",
                f"    command: {json.dumps(sys.executable)}",
                f"    args: [{json.dumps(str(FIXTURE_SERVER))}]",
                *([f"    {server}"] if server else []),
                "steps:",
                steps,
                "",
            ]
        )
    )
    return path


@dataclass
class Ran:
    """A finished in-process run: its result, its events as the sinks saw them, and the
    chat requests the fake received."""

    result: Any
    events: list[dict[str, Any]]
    chat_requests: list[Any]


def run(path: Path, script: list[Any], **options: Any) -> Ran:
    events: list[Event] = []
    options = {"runs_dir": path.parent / "runs", "sinks": (events.append,), **options}
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=script) as lm:
        if options.get("replay") is None:
            options["base_url"] = lm.url
        result = asyncio.run(run_workflow(load_workflow(path), {}, RunOptions(**options)))
    assert result.status == "succeeded", result.error
    return Ran(result, [e.as_dict() for e in events], lm.chat_requests)


def run_dir(path: Path, run_id: str) -> Path:
    return path.parent / "runs" / run_id


def logged(path: Path, run_id: str) -> list[dict[str, Any]]:
    lines = (run_dir(path, run_id) / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def tool_results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "tool_result"]


def kept(path: Path, ran: Ran) -> tuple[dict[str, Any], str]:
    """The run's one `tool_result` as events.jsonl has it, and the text of its result file."""
    (event,) = tool_results(logged(path, ran.result.run_id))
    return event, (run_dir(path, ran.result.run_id) / event["full_result"]).read_text()


# --- the cap --------------------------------------------------------------------------------


def test_a_result_within_the_limit_is_left_alone() -> None:
    result = ToolResult("x" * 10)
    assert capped(result, 10) is result


def test_a_cut_result_keeps_its_head_a_note_and_the_whole_text() -> None:
    text = blob(1000)
    cut = capped(ToolResult(text, structured={"k": 1}), 100)
    assert cut.text == text[:100] + note(900, 1000, text)
    assert cut.full_text == text
    assert cut.structured == {"k": 1}


def test_max_result_chars_is_read_from_servers_and_model_steps(tmp_path: Path) -> None:
    path = write_workflow(
        tmp_path,
        server="max_result_chars: 1000",
        steps="  - {id: a, mcp: [fx], prompt: Go., max_result_chars: 300}\n"
        "  - {id: b, mcp: [fx], prompt: Go.}",
    )
    workflow = load_workflow(path)
    assert workflow.mcp_servers["fx"].max_result_chars == 1000
    assert [step.max_result_chars for step in workflow.steps] == [300, None]


@pytest.mark.parametrize(
    ("server", "steps", "line"),
    [
        ("max_result_chars: 0", "  - {id: a, mcp: [fx], prompt: Go.}", 8),
        ("", "  - {id: a, mcp: [fx], prompt: Go., max_result_chars: many}", 9),
        ("", "  - {id: a, tool: fx.echo, max_result_chars: 10}", 9),
    ],
    ids=["zero", "not-a-number", "on-a-tool-step"],
)
def test_a_bad_max_result_chars_is_a_problem_with_its_line(
    tmp_path: Path, server: str, steps: str, line: int
) -> None:
    _, problems = check_file(write_workflow(tmp_path, server=server, steps=steps))
    assert [(p.line, "max_result_chars" in p.message + (p.hint or "")) for p in problems] == [
        (line, True)
    ]


def test_an_agent_step_gives_the_model_the_cut_result_and_keeps_the_whole(
    tmp_path: Path, tag: str
) -> None:
    path = write_workflow(
        tmp_path,
        server="max_result_chars: 1000",
        steps="  - {id: fetch, mcp: [fx], prompt: Fetch.}",
    )
    ran = run(path, [[("blob", {"characters": 200_000})], "done"])

    whole = blob(200_000)
    expected = whole[:1000] + note(199_000, 200_000, whole)
    (seen,) = [m for m in ran.chat_requests[1]["messages"] if m["role"] == "tool"]
    assert seen["content"] == expected

    event, text = kept(path, ran)
    assert event["content"] == expected
    assert event["full_result"] == result_file(whole)
    assert event["full_chars"] == 200_000
    assert "full_content" not in event
    assert text == whole
    # the log holds the 1,000 characters the model saw, not the 200,000
    assert (run_dir(path, ran.result.run_id) / "events.jsonl").stat().st_size < 20_000


def test_the_step_setting_overrides_the_server_s(tmp_path: Path, tag: str) -> None:
    path = write_workflow(
        tmp_path,
        server="max_result_chars: 1000",
        steps="  - {id: fetch, mcp: [fx], prompt: Fetch., max_result_chars: 300}",
    )
    ran = run(path, [[("blob", {"characters": 5000})], "done"])
    (event,) = tool_results(ran.events)
    whole = blob(5000)
    assert event["content"] == whole[:300] + note(4700, 5000, whole)


def test_without_a_setting_the_default_limit_applies(tmp_path: Path, tag: str) -> None:
    path = write_workflow(tmp_path, steps="  - {id: fetch, mcp: [fx], prompt: Fetch.}")
    size = DEFAULT_MAX_RESULT_CHARS + 10
    ran = run(path, [[("blob", {"characters": size})], "done"])
    (event,) = tool_results(ran.events)
    whole = blob(size)
    assert event["content"] == whole[:DEFAULT_MAX_RESULT_CHARS] + note(10, size, whole)


def test_a_direct_tool_step_outputs_the_whole_result_and_logs_the_cut_one(
    tmp_path: Path, tag: str
) -> None:
    path = write_workflow(
        tmp_path,
        server="max_result_chars: 100",
        steps="  - {id: fetch, tool: fx.blob, with: {characters: 5000}}\n"
        "outputs:\n  size: '{{ steps.fetch.output.result | length }}'",
    )
    ran = run(path, [])
    assert ran.result.outputs == {"size": 5000}
    event, text = kept(path, ran)
    whole = blob(5000)
    assert event["content"] == whole[:100] + note(4900, 5000, whole)
    assert text == whole


def test_a_secret_in_a_cut_result_is_masked_in_the_kept_file_too(
    tmp_path: Path, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LARGE_RESULT_SECRET", "s3cr3t-value")
    path = write_workflow(
        tmp_path,
        server="max_result_chars: 100",
        steps="  - id: fetch\n    tool: fx.echo\n"
        "    with: {text: \"{{ 'x' * 500 }}{{ env.LARGE_RESULT_SECRET }}\"}",
    )
    ran = run(path, [])
    assert kept(path, ran)[1] == "x" * 500 + "***"
    for written in run_dir(path, ran.result.run_id).rglob("*"):
        if written.is_file():
            assert "s3cr3t-value" not in written.read_text()


def test_record_and_replay_of_a_cut_result_agree(tmp_path: Path, tag: str) -> None:
    path = write_workflow(
        tmp_path,
        server="max_result_chars: 500",
        steps="  - {id: fetch, mcp: [fx], prompt: Fetch.}",
    )
    cassette = tmp_path / "large.cassette.yaml"
    script = [[("blob", {"characters": 20_000})], "done"]
    recorded = run(path, script, record=cassette)
    replayed = run(path, [], replay=cassette)
    assert snapshot_view(replayed.events) == snapshot_view(recorded.events)
    assert kept(path, replayed)[1] == blob(20_000)


# --- the stdio line reader ------------------------------------------------------------------


def test_lines_split_across_chunks_come_out_whole() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b"1") == []
    assert splitter.feed(b'}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert splitter.feed(b":3}\n") == [b'{"c":3}']
    assert splitter.feed(b"\n") == [b""]


def test_a_message_larger_than_the_pipe_arrives_whole_over_stdio(tmp_path: Path, tag: str) -> None:
    # 3 MB in one JSON-RPC line: dozens of reads of the pipe, joined once.
    path = write_workflow(
        tmp_path,
        steps="  - {id: fetch, tool: fx.blob, with: {characters: 3000000}}\n"
        "outputs:\n  size: '{{ steps.fetch.output.result | length }}'",
    )
    ran = run(path, [])
    assert ran.result.outputs == {"size": 3_000_000}
    (event,) = tool_results(ran.events)
    assert event["full_chars"] == 3_000_000
    assert os.path.getsize(run_dir(path, ran.result.run_id) / event["full_result"]) == 3_000_000
