"""MCP servers shared by the rows of a batch and by many runs (runner/shared_servers.py,
`api.open_servers`, docs/batch.md#mcp-servers), with real fixture servers counted."""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from fakes.lmstudio import FakeLMStudio
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, wait_until_gone
from test_batch import WORKFLOW, read_out, stop_mid_batch, write_rows

import lmflow_runner
from lmflow_runner import RunOptions
from lmflow_runner.errors import ConfigurationError
from lmflow_runner.shared_servers import unshareable

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def counted_server(
    tag: str, starts: Path, env: dict[str, str] | None = None, **settings: object
) -> str:
    """The fixture server as a `mcp_servers:` entry that adds a line to `starts` each time
    it starts, and carries `tag` for process counting."""
    command = f"echo started >> {shlex.quote(str(starts))}; exec {sys.executable} {FIXTURE_SERVER}"
    environment = {TAG_VARIABLE: tag, **(env or {})}
    entry = {"command": "sh", "args": ["-c", command], "env": environment, **settings}
    return json.dumps(entry)


def tool_workflow(folder: Path, server: str, tool: str = "echo") -> Path:
    """The greeting workflow with a tool step of `server` before the model step."""
    path = folder / "greet-tool.yaml"
    arguments = "{text: '{{ inputs.name }}'}" if tool == "echo" else "{message: nope}"
    path.write_text(
        WORKFLOW.replace("steps:\n", f"mcp_servers:\n  fx: {server}\nsteps:\n").replace(
            "  - id: hello\n",
            f"  - {{id: call, tool: fx.{tool}, with: {arguments}}}\n"
            "  - id: hello\n    needs: [call]\n",
        )
    )
    return path


def starts_of(starts: Path) -> int:
    return len(starts.read_text().splitlines()) if starts.exists() else 0


@pytest.mark.parametrize(("tool", "exit_code"), [("echo", 0), ("fail", 1)])
def test_rows_of_a_batch_share_servers_started_once(
    tmp_path: Path,
    fake_lmstudio: FakeLMStudio,
    lmflow_cli: Callable[..., object],
    process_tag: str,
    tool: str,
    exit_code: int,
) -> None:
    """Eight rows, four at a time: the server starts once for the batch, whether the rows
    succeed or fail, and is gone when the batch ends."""
    starts = tmp_path / "starts.log"
    workflow = tool_workflow(tmp_path, counted_server(process_tag, starts), tool)
    names = [f"n{i}" for i in range(8)]
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": name} for name in names])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli(
        "batch", str(workflow), str(rows), "-o", str(out), "--no-log", "-q",
        "--base-url", fake_lmstudio.url, "--concurrency", "4",
    )  # fmt: skip
    assert outcome.exit_code == exit_code, outcome.stderr  # type: ignore[attr-defined]
    records = read_out(out)
    assert sorted(r["line"] for r in records) == list(range(1, 9))
    if tool == "echo":
        assert {r["outputs"]["said"] for r in records} == {
            f"echo: Greet {n} 1 times" for n in names
        }
    else:
        assert {r["status"] for r in records} == {"failed"}
    assert starts_of(starts) == 1
    assert wait_until_gone(process_tag) == []


@pytest.mark.parametrize(("stop", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_batch_stops_the_shared_servers(
    tmp_path: Path,
    make_fake_lmstudio: Callable[..., FakeLMStudio],
    process_tag: str,
    stop: signal.Signals,
    exit_code: int,
) -> None:
    starts = tmp_path / "starts.log"
    workflow = tool_workflow(tmp_path, counted_server(process_tag, starts))
    server = make_fake_lmstudio(chat_delay=0.3)
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(20)])
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "runner", "batch", str(workflow), str(rows), "-o", str(out),
               "--base-url", server.url, "--concurrency", "2", "-q", "--no-log"]  # fmt: skip
    assert stop_mid_batch(command, out, stop) == exit_code
    assert starts_of(starts) == 1
    assert wait_until_gone(process_tag) == []


def test_servers_reading_row_inputs_start_per_row(
    tmp_path: Path, fake_lmstudio: FakeLMStudio, lmflow_cli: Callable[..., object], process_tag: str
) -> None:
    """A server whose settings read the row's inputs cannot be shared: one start per row."""
    starts = tmp_path / "starts.log"
    server = counted_server(process_tag, starts, env={"ROW": "{{ inputs.name }}"})
    per_row = tool_workflow(tmp_path, server)
    assert unshareable(lmflow_runner.load_workflow(per_row)) == ["mcp_servers.fx reads inputs.name"]
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": f"n{i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli(
        "batch", str(per_row), str(rows), "-o", str(out), "--no-log", "-q",
        "--base-url", fake_lmstudio.url,
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.stderr  # type: ignore[attr-defined]
    assert starts_of(starts) == 3
    assert wait_until_gone(process_tag) == []


@pytest.mark.anyio
async def test_open_servers_serves_many_runs_within_the_call_limit(
    tmp_path: Path, fake_lmstudio: FakeLMStudio, process_tag: str
) -> None:
    """Runs handed the same servers share them, and `max_concurrent_calls: 1` holds across
    the runs: a run's call waits while another caller holds the only slot."""
    starts = tmp_path / "starts.log"
    workflow = lmflow_runner.load_workflow(
        tool_workflow(tmp_path, counted_server(process_tag, starts, max_concurrent_calls=1))
    )
    options = RunOptions(base_url=fake_lmstudio.url, write_log=False)
    finished: list[str] = []
    async with lmflow_runner.open_servers(workflow) as servers:

        async def hold_the_slot() -> None:
            await servers.tools.call_tool("fx", "sleep", {"seconds": 2})
            finished.append("sleep")

        async def one_run(name: str) -> None:
            shared = dataclasses.replace(options, servers=servers)
            result = await lmflow_runner.run_workflow(workflow, {"name": name}, shared)
            assert result.ok and result.outputs["said"] == f"echo: Greet {name} 1 times"
            finished.append(name)

        async with anyio.create_task_group() as group:
            group.start_soon(hold_the_slot)
            await wait_all_tasks_blocked()
            group.start_soon(one_run, "ann")
            group.start_soon(one_run, "bob")
        assert finished[0] == "sleep" and sorted(finished[1:]) == ["ann", "bob"]
        assert starts_of(starts) == 1
        (tmp_path / "other").mkdir()
        other = lmflow_runner.load_workflow(tool_workflow(tmp_path / "other", '{"command": "x"}'))
        with pytest.raises(ConfigurationError, match="opened for another workflow"):
            await lmflow_runner.run_workflow(
                other, {"name": "x"}, dataclasses.replace(options, servers=servers)
            )
    assert (await lmflow_runner.run_workflow(workflow, {"name": "cy"}, options)).ok
    assert starts_of(starts) == 2  # without shared servers, the run starts its own
    assert wait_until_gone(process_tag) == []


def test_open_servers_refuses_servers_that_depend_on_the_run(tmp_path: Path) -> None:
    server = json.dumps({"command": sys.executable, "args": ["{{ run.dir }}/x"]})
    workflow = lmflow_runner.load_workflow(tool_workflow(tmp_path, server))

    async def open_them() -> None:
        async with lmflow_runner.open_servers(workflow):
            pass

    with pytest.raises(ConfigurationError, match=r"mcp_servers\.fx reads run\.dir"):
        anyio.run(open_them)


def test_servers_that_log_in_or_belong_to_sub_workflows_are_not_shared(tmp_path: Path) -> None:
    """A run masks the OAuth tokens it reads itself, and a sub-workflow's servers start with
    each run: neither is shared by the rows of a batch."""
    remote = tmp_path / "remote.yaml"
    remote.write_text(
        "version: 1\nname: remote\n"
        "mcp_servers:\n  notes: {url: 'https://notes.example.com/mcp', oauth: true}\n"
        "steps:\n  - {id: read, tool: notes.read, with: {}}\n"
    )
    assert unshareable(lmflow_runner.load_workflow(remote)) == [
        "mcp_servers.notes logs in with OAuth (each run masks the tokens it sees)"
    ]
    parent = tmp_path / "parent.yaml"
    parent.write_text("version: 1\nname: parent\nsteps:\n  - {id: inner, workflow: remote.yaml}\n")
    assert unshareable(lmflow_runner.load_workflow(parent)) == [
        "it runs remote.yaml as a sub-workflow, whose servers start with each run"
    ]
