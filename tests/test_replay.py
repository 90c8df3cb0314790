"""Record and replay: round trips with real MCP servers, misses, broken cassettes, --rerecord,
--live-tools. LM Studio is the fake HTTP server in script mode; replays get a closed port."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.lmstudio import FakeLMStudio, FakeModel, down_url
from hostile import ALIAS_BOMB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, new_tag, wait_until_gone

from runner.chat import ChatRequest, ToolResult
from runner.errors import (
    CassetteError,
    LLMResponseError,
    LLMTimeoutError,
    LmflowError,
    MCPServerError,
    ReplayMissError,
)
from runner.replay import Cassette, Normalizer, Recorder, Replayer, ToolExchange, to_yaml
from runner.runlog import Event, Redactor, RunLog, snapshot_view
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
    """`lmflow ARGS`; LM Studio, should anything ask it, is where nothing listens."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LMFLOW_BASE_URL": down_url(),
    }
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

    status, replayed, result = run(workflow_file, replay=cassette)

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
    done = lmflow("run", str(workflow_file), "--replay", str(cassette), "-q", cwd=tmp_path)
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
    # The diff is shown once (with the failed step), and the hint names this workflow's path.
    assert done.stderr.count("closest recorded request") == 1
    assert "error: replay miss (step 'look', round 1): the cassette holds no answer to this " in (
        done.stderr
    )
    assert done.stderr.count("+  content: 'Read notes.txt and add 2 and 4.") == 1
    assert f"re-record it: lmflow run {workflow_file} --record {cassette} --rerecord" in (
        done.stderr
    )
    assert "WORKFLOW" not in done.stderr
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
        ("version: 1\nexchanges:\n- n: 1\n  kind: llm\n  request: {model: x\n", ":5:12: "),
        ("version: 1\nexchanges:\n- n: 1\n  kind: tool\n  server: fx\n", ":3: not a valid"),
        ("version: 2\nexchanges: []\n", ":1: not a valid cassette: at version"),
        ("", "is empty"),
        (
            "version: 1\nexchanges:\n- n: 1\n  kind: llm\n  request:\n    model: m\n"
            "    continues: 7\n    messages: []\n  response: {content: hi}\n",
            ":7: exchange 1 continues exchange 7",
        ),
        (
            "version: 1\nservers:\n  fx:\n  - name: echo\nexchanges: []\n",
            ":4: not a valid cassette: at servers/fx/0: 'input_schema' is a required property",
        ),
        (
            "version: 1\nservers:\n  fx:\n  - name: echo\n    input_schema: {}\n"
            "    annotations: 5\nexchanges: []\n",
            ":6: not a valid cassette: at servers/fx/0/annotations: ",
        ),
        (
            "version: 1\nexchanges:\n- n: 1\n  kind: llm\n  request:\n    model: m\n"
            "    messages:\n    - {role: assistant, tool_calls: abc}\n  response: {}\n",
            ":8: not a valid cassette: at exchanges/0/request/messages/0/tool_calls",
        ),
        (
            "version: 1\nexchanges:\n- n: 1\n  kind: llm\n  request: {model: m, messages: []}\n",
            ":3: not a valid cassette: exchange 1 needs either `response` or `error`",
        ),
        (
            "version: 1\nexchanges: &loop [*loop]\n",
            ":2:12: the cassette is not valid YAML: an alias",
        ),
        # the workflow loader's limits hold for cassettes too (one shared loader)
        (
            "version: 1\nexchanges: " + "[" * 65 + "]" * 65 + "\n",
            ":2:75: the cassette is not valid YAML: YAML nesting is deeper than 64",
        ),
        (ALIAS_BOMB, "document expands to more than 200,000 nodes"),
        (
            "version: 1\nversion: 1\nexchanges: []\n",
            ":2:1: the cassette is not valid YAML: duplicate key",
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
    done = lmflow("run", str(workflow_file), "--record", str(cassette), cwd=tmp_path)
    assert done.returncode == 2  # a command-line mistake, found before the run starts
    assert not (tmp_path / ".lmflow").exists()
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
    assert Cassette.load(cassette).outcome == "failed"  # from the steps: run_finished comes later

    status, replayed, _ = run(workflow_file, replay=cassette)
    assert status == "failed"
    assert view(replayed) == view(recorded)


def test_record_to_a_place_that_cannot_be_written_exits_2_before_the_run(
    workflow_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    directory = tmp_path / "a-dir"
    directory.mkdir()
    cases = {
        str(tmp_path / "a-file" / "c.yaml"): "cannot write the cassette",
        str(directory): "is a directory",
    }
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=SCRIPT) as lm:
        for cassette, message in cases.items():
            done = lmflow(
                "run", str(workflow_file), "--record", cassette, "--base-url", lm.url,
                cwd=tmp_path,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert message in done.stderr and cassette in done.stderr
            assert "Traceback" not in done.stderr
        assert lm.requests == []  # checked up front: nothing ran
    assert not (tmp_path / ".lmflow").exists()


def test_a_cassette_that_cannot_be_saved_is_a_cassette_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    with pytest.raises(CassetteError) as caught:
        Cassette(workflow="w").save(target)
    assert f"cannot write the cassette {target}" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert list(target.iterdir()) == []


LM_STUDIO_ERROR = {"error": "No models loaded. Please load a model in the developer page."}


def test_a_failed_model_call_is_recorded_and_replays_to_the_same_failure(
    workflow_file: Path, tmp_path: Path
) -> None:
    cassette = tmp_path / "c.yaml"
    lm_error = (400, LM_STUDIO_ERROR)
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], chat_error=lm_error) as lm:
        recorded = lmflow("run", str(workflow_file), "--record", str(cassette),
                          "--base-url", lm.url, cwd=tmp_path)  # fmt: skip
    assert recorded.returncode == 1, recorded.stderr
    exchange = yaml.safe_load(cassette.read_text())["exchanges"][1]
    assert exchange["kind"] == "llm" and "response" not in exchange
    assert exchange["error"]["type"] == "LLMResponseError"
    assert "No models loaded" in exchange["error"]["message"]

    replayed = lmflow("run", str(workflow_file), "--replay", str(cassette), cwd=tmp_path)
    assert replayed.returncode == 1, replayed.stderr
    results = [json.loads(p.read_text()) for p in (tmp_path / ".lmflow" / "runs").glob("*/*.json")]
    steps = [[(s["id"], s["status"], s["error"]) for s in r["steps"]] for r in results]
    assert len(steps) == 2 and steps[0] == steps[1]
    assert steps[0][1][1] == "failed" and "No models loaded" in steps[0][1][2]


class _DyingTools:
    """A tool source (our own interface) whose server dies on the first call."""

    def tools(self, server: str) -> list[Any]:
        return []

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        raise MCPServerError(f"MCP server {server!r} stopped: it exited with code 1")


def test_an_mcp_server_error_is_recorded_and_replayed(tmp_path: Path) -> None:
    log = RunLog("run-1")
    recorder = Recorder("w", log, {})
    tools = recorder.tools(_DyingTools(), ["fx"])
    with pytest.raises(MCPServerError):
        asyncio.run(tools.call_tool("fx", "echo", {"text": "hi"}))
    path = tmp_path / "c.yaml"
    recorder.cassette().save(path)

    replayer = Replayer(Cassette.load(path), RunLog("run-2"), {})
    with pytest.raises(MCPServerError) as caught:
        asyncio.run(replayer.call_tool("fx", "echo", {"text": "hi"}))
    assert caught.value.message == "MCP server 'fx' stopped: it exited with code 1"


@pytest.mark.parametrize(
    ("kind", "recorded", "expected"),
    [
        ("llm", "LLMTimeoutError", LLMTimeoutError),
        ("llm", "NoSuchError", LLMResponseError),
        ("llm", "MCPServerError", LLMResponseError),  # not an error a model call raises
        ("tool", "LLMTimeoutError", MCPServerError),
    ],
)
def test_a_recorded_error_is_raised_as_its_class_or_a_general_one(
    tmp_path: Path, kind: str, recorded: str, expected: type[LmflowError]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MUTABLE_CASSETTE.replace("type: LLMTimeoutError", f"type: {recorded}")
                    .replace("type: MCPServerError", f"type: {recorded}"))  # fmt: skip
    replayer = Replayer(Cassette.load(path), RunLog("r"), {})
    (exchange,) = [e for e in replayer.cassette.exchanges if e.error and (kind == "tool") ==
                   isinstance(e, ToolExchange)]  # fmt: skip
    with pytest.raises(LmflowError) as caught:
        if isinstance(exchange, ToolExchange):
            asyncio.run(replayer.call_tool(exchange.server, exchange.tool, exchange.arguments))
        else:
            asyncio.run(replayer.chat(request_of(exchange.request)))
    assert type(caught.value) is expected
    assert caught.value.message == exchange.error["message"]


def test_whole_number_floats_match_their_ints(workflow_file: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "c.yaml"
    workflow_file.write_text(WORKFLOW.replace("temperature: 0.1", "temperature: 1"))
    record(workflow_file, cassette)
    workflow_file.write_text(WORKFLOW.replace("temperature: 0.1", "temperature: 1.0"))
    status, _, _ = run(workflow_file, replay=cassette)
    assert status == "succeeded"


def test_a_miss_that_differs_only_in_number_types_says_so(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MUTABLE_CASSETTE)
    replayer = Replayer(Cassette.load(path), RunLog("r"), {})
    assert (
        asyncio.run(replayer.call_tool("fx", "echo", {"text": "start", "n": 1.0})).text == "start"
    )
    with pytest.raises(ReplayMissError) as caught:
        asyncio.run(replayer.call_tool("fx", "echo", {"text": "start", "n": True}))
    assert "differ only in number types" in caught.value.message

    echo = {"type": "function", "function": {"name": "echo"}}
    request = ChatRequest("m", ({"role": "user", "content": "hi"},), (echo,), temperature=True)
    with pytest.raises(ReplayMissError) as caught:
        asyncio.run(replayer.chat(request))
    assert "it differs in params:\n(equal as numbers: they differ only in number types" in (
        caught.value.message
    )
    assert replayer.first_miss is not None and "tool fx.echo" in replayer.first_miss.message


def test_placeholders_replace_mapping_keys_too() -> None:
    context = {"workflow": {"dir": "/home/ada/repo"}, "run": {"id": "20260101-000000-abcdef"}}
    normalize = Normalizer(Redactor(["s3cret"]), context)
    value = {"/home/ada/repo/notes.txt": ["/home/ada/repo", "s3cret"], "s3cret": 1}
    hidden = normalize(value)
    assert hidden == {"<workflow.dir>/notes.txt": ["<workflow.dir>", "***"], "***": 1}
    assert normalize.restore(hidden) == {
        "/home/ada/repo/notes.txt": ["/home/ada/repo", "***"],
        "***": 1,
    }


def test_snapshot_serialisation_does_not_import_the_mcp_sdk() -> None:
    probe = (
        "import sys\n"
        "import runner.pytest_plugin\n"
        "from runner.replay import to_yaml\n"
        "to_yaml([{'type': 'run_started'}])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'httpx', 'anyio'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr


# --- YAML round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a\x85b", "line\u2028sep", "para\u2029sep", "cr\rlf", "x\x85\n"])
def test_yaml_line_break_characters_survive(text: str) -> None:
    value = {"content": text, text: [text]}
    assert yaml.safe_load(to_yaml(value)) == value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_to_yaml_round_trips_json_data(value: Any) -> None:
    assert yaml.safe_load(to_yaml(value)) == value


# --- every cassette either loads and replays, or is a CassetteError -------------------------

MUTABLE_CASSETTE = """\
version: 1
workflow: w
outcome: failed
servers:
  fx:
  - name: echo
    description: Echo
    input_schema: {type: object, properties: {text: {type: string}}}
exchanges:
- n: 1
  kind: tool
  step: first
  server: fx
  tool: echo
  arguments: {text: start, n: 1}
  result: {text: start, is_error: false, structured: {a: 1}}
- n: 2
  kind: llm
  step: look
  round: 1
  request:
    model: m
    tools: [echo]
    params: {temperature: 1}
    messages:
    - {role: user, content: hi}
  response:
    content: null
    tool_calls:
    - {id: call-1, name: echo, arguments: '{"text": "x"}'}
    finish_reason: tool_calls
    usage: {prompt_tokens: 1, completion_tokens: 2}
- n: 3
  kind: llm
  step: look
  round: 2
  request:
    model: m
    continues: 2
    messages:
    - role: assistant
      content: ''
      tool_calls: [{id: call-1, type: function, function: {name: echo, arguments: '{}'}}]
    - {role: tool, tool_call_id: call-1, content: x}
  error: {type: LLMTimeoutError, message: too slow}
- n: 4
  kind: tool
  step: look
  server: fx
  tool: echo
  arguments: {text: y}
  error: {type: MCPServerError, message: died}
"""


def request_of(record: Mapping[str, Any]) -> ChatRequest:
    return ChatRequest(str(record["model"]), tuple(record["messages"]))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        yield from _paths(item, (*prefix, key))


ODD = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=4)
    | st.dates()
    | st.lists(st.integers() | st.text(max_size=2), max_size=2)
    | st.dictionaries(
        st.integers() | st.text(max_size=2) | st.dates(), st.text(max_size=2), max_size=2
    )
)


@given(st.data())
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_mutated_cassette_replays_or_is_a_cassette_error(
    tmp_path: Path, data: st.DataObject
) -> None:
    document = yaml.safe_load(MUTABLE_CASSETTE)
    for _ in range(data.draw(st.integers(1, 3))):
        *at, last = data.draw(st.sampled_from(list(_paths(document))[1:]))
        parent = document
        for key in at:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "rekey"]))
        if action == "delete":
            del parent[last]
        elif action == "rekey" and isinstance(parent, dict):
            parent[data.draw(st.integers() | st.dates())] = parent.pop(last)
        else:
            parent[last] = data.draw(ODD)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        cassette = Cassette.load(path)
    except CassetteError:
        return
    replayer = Replayer(cassette, RunLog("r"), {"workflow": {"name": "w"}})
    for server in cassette.servers:
        replayer.tools(server)
    for exchange in cassette.exchanges:
        try:
            if isinstance(exchange, ToolExchange):
                call = replayer.call_tool(exchange.server, exchange.tool, exchange.arguments)
            else:
                call = replayer.chat(request_of(exchange.request))
            asyncio.run(call)
        except LmflowError:
            pass
    path.write_text(cassette.dump())
    Cassette.load(path)
