"""Record and replay: round trips with real MCP servers, misses, broken cassettes, --rerecord,
--live-tools. LM Studio is the fake HTTP server in script mode; replays get a closed port."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.lmstudio import FakeLMStudio, FakeModel, down_url
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, new_tag, wait_until_gone

from runner.errors import CassetteError, ReplayMissError
from runner.replay import Cassette
from runner.runlog import Event, snapshot_view
from runner.runtime import RunOptions, run_workflow
from runner.spec import load_workflow

MODEL = "qwen/qwen3-4b"

WORKFLOW = f"""\
version: 1
name: round-trip
defaults: {{model: {MODEL}, temperature: 0.1}}
inputs:
  label: {{type: string, default: alpha}}
mcp_servers:
  fx:
    command: {sys.executable}
    args: ["{FIXTURE_SERVER}", "--name", "{{{{ inputs.label }}}}"]
  time:
    command: {sys.executable}
    args: ["-m", "mcp_server_time", "--local-timezone", "UTC"]
steps:
  - id: first
    tool: fx.echo
    with: {{text: "start"}}
  - id: look
    mcp: [fx, time]
    tools: [read_file, add, convert_time]
    prompt: "Read notes.txt and add 2 and 3. Then say done. ({{{{ steps.first.output }}}})"
  - id: sum
    prompt: "Summarize as JSON: {{{{ steps.look.output }}}}"
    output_schema:
      type: object
      properties: {{total: {{type: integer}}}}
      required: [total]
outputs:
  said: "{{{{ steps.look.output }}}}"
  total: "{{{{ steps.sum.output.total }}}}"
"""

SCRIPT: list[Any] = [
    [("read_file", {"path": "notes.txt"}), ("add", {"a": 2, "b": 3})],
    "done: 5",
    '{"total": 5}',
]


@pytest.fixture
def workflow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "round-trip.yaml"
    path.write_text(WORKFLOW)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TAG_VARIABLE, new_tag())  # the servers inherit it: leaks are findable
    return path


def run(path: Path, **options: Any) -> tuple[str, list[dict[str, Any]], Any]:
    """Run in-process; (status, events as dicts, result)."""
    events: list[Event] = []
    result = asyncio.run(
        run_workflow(
            load_workflow(path),
            options.pop("inputs", {}),
            RunOptions(runs_dir=path.parent / "runs", sinks=(events.append,), **options),
        )
    )
    return result.status, [json.loads(json.dumps(e.as_dict())) for e in events], result


def view(events: Sequence[dict[str, Any]]) -> str:
    return json.dumps(snapshot_view(events), indent=1, sort_keys=True)


def lmflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def record(path: Path, cassette: Path, **options: Any) -> list[dict[str, Any]]:
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=SCRIPT) as lm:
        status, events, _ = run(path, base_url=lm.url, record=cassette, **options)
    assert status == "succeeded"
    return events


def test_record_then_replay_gives_the_same_snapshot_view(workflow_file: Path) -> None:
    cassette = workflow_file.parent / "cassettes" / "round-trip.yaml"
    recorded = record(workflow_file, cassette)

    status, replayed, result = run(workflow_file, base_url=down_url(), replay=cassette)

    assert status == "succeeded"
    assert result.outputs == {"said": "done: 5", "total": 5}
    assert view(replayed) == view(recorded)
    # the tool calls of one turn ran concurrently against the real fixture server
    results = [e["content"] for e in replayed if e["type"] == "tool_result"]
    assert results == ["start", "alpha read notes.txt", "5.0"]
    assert not wait_until_gone(os.environ[TAG_VARIABLE])


def test_the_cassette_is_readable_yaml_in_call_order(workflow_file: Path) -> None:
    cassette = workflow_file.parent / "round-trip.cassette.yaml"
    record(workflow_file, cassette)
    data = yaml.safe_load(cassette.read_text())
    kinds = [(e["kind"], e["step"]) for e in data["exchanges"]]
    assert kinds == [
        ("tool", "first"),
        ("llm", "look"),
        ("tool", "look"),
        ("tool", "look"),
        ("llm", "look"),
        ("llm", "sum"),
    ]
    second = data["exchanges"][4]["request"]
    assert second["continues"] == 2  # only the new messages are written again
    assert [m["role"] for m in second["messages"]] == ["assistant", "tool", "tool"]
    assert data["exchanges"][1]["response"]["tool_calls"][0]["id"] == "call-1"
    assert data["exchanges"][1]["request"]["params"] == {"temperature": 0.1}
    assert sorted(data["servers"]) == ["fx", "time"]
    assert Cassette.load(cassette).dump() == cassette.read_text()


def test_replay_needs_no_lm_studio_and_no_server(workflow_file: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.yaml"
    record(workflow_file, cassette)
    # A server that cannot start proves none is started.
    broken = WORKFLOW.replace(f"command: {sys.executable}", "command: /nonexistent/python")
    workflow_file.write_text(broken)
    done = lmflow("run", str(workflow_file), "--replay", str(cassette), "--base-url", down_url(),
                  "-q", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "said: done: 5"
    assert len(list((tmp_path / ".lmflow" / "runs").glob("*/events.jsonl"))) == 1


def test_a_request_the_cassette_lacks_exits_3_with_the_closest_and_a_diff(
    workflow_file: Path, tmp_path: Path
) -> None:
    cassette = tmp_path / "c.yaml"
    record(workflow_file, cassette)
    workflow_file.write_text(WORKFLOW.replace("add 2 and 3", "add 2 and 4"))

    done = lmflow("run", str(workflow_file), "--replay", str(cassette), cwd=tmp_path)

    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert "replay miss (step 'look', round 1)" in done.stderr
    assert "closest recorded request: exchange 2 (step 'look', round 1)" in done.stderr
    assert "differs in messages" in done.stderr
    assert "-  content: 'Read notes.txt and add 2 and 3." in done.stderr
    assert "+  content: 'Read notes.txt and add 2 and 4." in done.stderr
    assert "--rerecord" in done.stderr
    result = json.loads(next((tmp_path / ".lmflow" / "runs").glob("*/result.json")).read_text())
    assert result["status"] == "error"
    assert [s["status"] for s in result["steps"]] == ["succeeded", "failed", "skipped"]


def test_a_changed_parameter_is_named_in_the_miss(workflow_file: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.yaml"
    record(workflow_file, cassette)
    workflow_file.write_text(WORKFLOW.replace("temperature: 0.1", "temperature: 0.7"))
    with pytest.raises(ReplayMissError) as caught:
        run(workflow_file, replay=cassette)
    assert "differs in params" in caught.value.message
    assert "temperature: 0.7" in caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nexchanges:\n- n: 1\n  kind: llm\n  request: {model: x\n", ":6:1: "),
        ("version: 1\nexchanges:\n- n: 1\n  kind: tool\n  server: fx\n", ":3: not a valid"),
        ("version: 2\nexchanges: []\n", ":1: not a valid cassette: at version"),
        ("", "is empty"),
        (
            "version: 1\nexchanges:\n- n: 1\n  kind: llm\n  request:\n    model: m\n"
            "    continues: 7\n    messages: []\n  response: {content: hi}\n",
            ":7: exchange 1 continues exchange 7",
        ),
    ],
)
def test_a_corrupted_cassette_exits_3_with_file_and_line(
    workflow_file: Path, tmp_path: Path, text: str, expected: str
) -> None:
    cassette = tmp_path / "broken.yaml"
    cassette.write_text(text)
    with pytest.raises(CassetteError) as caught:
        Cassette.load(cassette)
    assert expected in caught.value.message

    done = lmflow("run", str(workflow_file), "--replay", str(cassette), cwd=tmp_path)
    assert done.returncode == 3
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_record_refuses_to_overwrite_without_rerecord(workflow_file: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.yaml"
    cassette.write_text("kept\n")
    done = lmflow("run", str(workflow_file), "--record", str(cassette), "--base-url", down_url(),
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 3
    assert "already exists; refusing to overwrite it" in done.stderr
    assert "--rerecord" in done.stderr
    assert cassette.read_text() == "kept\n"

    record(workflow_file, cassette, rerecord=True)
    assert Cassette.load(cassette).workflow == "round-trip"


def test_option_combinations_are_checked(workflow_file: Path, tmp_path: Path) -> None:
    for args in (["--record", "a.yaml", "--replay", "b.yaml"], ["--rerecord"], ["--live-tools"]):
        done = lmflow("run", str(workflow_file), *args, cwd=tmp_path)
        assert done.returncode == 2, args
        assert "error:" in done.stderr


def test_live_tools_calls_the_real_servers(workflow_file: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.yaml"
    record(workflow_file, cassette)

    # From the cassette, the server's name does not matter: its answers were recorded.
    status, _, _ = run(workflow_file, replay=cassette, inputs={"label": "beta"})
    assert status == "succeeded"

    # Live, the server named beta answers differently, and the model request shows it.
    with pytest.raises(ReplayMissError) as caught:
        run(workflow_file, replay=cassette, live_tools=True, inputs={"label": "beta"})
    lines = caught.value.message.splitlines()
    assert any(line.startswith("  -") and "alpha read notes.txt" in line for line in lines)
    assert any(line.startswith("  +") and "beta read notes.txt" in line for line in lines)

    status, _, result = run(workflow_file, replay=cassette, live_tools=True)
    assert status == "succeeded"
    assert (workflow_file.parent / "runs" / result.run_id / "mcp-fx.stderr.log").is_file()
    assert not wait_until_gone(os.environ[TAG_VARIABLE])


def test_a_failed_run_is_recorded_and_replays_to_the_same_failure(
    workflow_file: Path, tmp_path: Path
) -> None:
    cassette = tmp_path / "c.yaml"
    script = [*SCRIPT[:2], "not json", "still not json", "nope"]
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=script) as lm:
        status, recorded, _ = run(workflow_file, base_url=lm.url, record=cassette)
    assert status == "failed"
    assert Cassette.load(cassette).outcome == "failed"

    status, replayed, _ = run(workflow_file, replay=cassette)
    assert status == "failed"
    assert view(replayed) == view(recorded)
