"""The MCP client features through `lmflow run`, as real subprocesses: the fake LM Studio
(or none at all) and real MCP server processes."""

from __future__ import annotations

from pathlib import Path

from fakes.lmstudio import down_url
from mcp_support import http_fixture
from test_run_cli import (
    MODEL,
    Make,
    assert_clean,
    fixture,
    lmflow,
    offered,
    tag,
    tool_messages,
    workflow,
)

__all__ = ["tag"]  # the fixture, imported for pytest


def test_a_workflow_of_tool_steps_runs_without_lm_studio(tmp_path: Path, tag: str) -> None:
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag)}
        steps:
          - {{id: say, tool: fx.echo, with: {{text: no model needed}}}}
        outputs:
          said: "{{{{ steps.say.output.result }}}}"
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", down_url(), tag=tag)
    assert run.code == 0, run.stderr
    assert run.stdout == "no model needed\n"  # a lone output is printed bare
    assert_clean(run)


def test_a_result_over_one_mib_over_http_reaches_the_model(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("blob", {"characters": 1_500_000})], "read it all"])
    with http_fixture(tag=tag) as (url, _):
        file = workflow(
            tmp_path,
            f"""
            mcp_servers:
              web: {{url: "{url}"}}
            steps:
              - {{id: read, mcp: [web], tools: [blob], prompt: "read a big blob"}}
            """,
        )
        run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    (message,) = tool_messages(lm.chat_requests[1])
    assert message["content"].startswith("0123456789abcdef")
    (result,) = [e for e in run.events() if e["type"] == "tool_result"]
    assert result["is_error"] is False
    assert result["full_chars"] == 1_500_000


def test_progress_of_a_call_is_in_the_run_log_and_out_of_the_snapshot(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    from runner.runlog import snapshot_view

    lm = make_fake_lmstudio(script=[[("progress", {"steps": 2, "delay": 0})], "done"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag, "--client-features")}
        steps:
          - {{id: wait, mcp: [fx], tools: [progress], prompt: "wait for it"}}
        """,
    )
    run = lmflow(tmp_path, "run", file, "--base-url", lm.url, tag=tag)
    assert run.code == 0, run.stderr
    events = run.events()
    progress = [e for e in events if e["type"] == "mcp_progress"]
    assert [(e["step"], e["tool"], e["progress"], e["total"]) for e in progress] == [
        ("wait", "progress", 1.0, 2.0),
        ("wait", "progress", 2.0, 2.0),
    ]
    assert "mcp_progress" not in {e["type"] for e in snapshot_view(events)}


def test_read_only_tools_are_offered_live_and_on_replay(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=[[("lookup", {"key": "k"})], "value of k"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag, "--client-features")}
        steps:
          - {{id: read, mcp: [fx], tools: {{read_only: true}}, prompt: "look k up"}}
        outputs:
          answer: "{{{{ steps.read.output }}}}"
        """,
    )
    cassette = tmp_path / "cassette.yaml"
    live = lmflow(tmp_path, "run", file, "--base-url", lm.url, "--record", str(cassette), tag=tag)
    assert live.code == 0, live.stderr
    assert [offered(request) for request in lm.chat_requests] == [["lookup"], ["lookup"]]
    assert "readOnlyHint: true" in cassette.read_text()
    replayed = lmflow(tmp_path, "run", file, "--replay", str(cassette), "--no-log", tag=tag)
    assert replayed.code == 0, replayed.stderr
    assert replayed.stdout == live.stdout == "value of k\n"


def test_sampling_is_answered_recorded_and_replayed_with_live_tools(
    tmp_path: Path, make_fake_lmstudio: Make, tag: str
) -> None:
    lm = make_fake_lmstudio(script=["one line"])
    file = workflow(
        tmp_path,
        f"""
        mcp_servers:
          fx: {fixture(tag, "--client-features", sampling=True)}
        steps:
          - {{id: digest, tool: fx.summarize, with: {{text: a long text}}}}
        outputs:
          summary: "{{{{ steps.digest.output.result }}}}"
        """,
    )
    cassette = tmp_path / "cassette.yaml"
    live = lmflow(tmp_path, "run", file, "--base-url", lm.url, "--record", str(cassette), tag=tag)
    assert live.code == 0, live.stderr
    assert live.stdout == f"{MODEL}: one line\n"  # defaults.model answers for a tool step
    (request,) = lm.chat_requests
    assert request["messages"] == [
        {"role": "system", "content": "Summarize in one line."},
        {"role": "user", "content": "a long text"},
    ]
    (sampled,) = [e for e in live.events() if e["type"] == "mcp_sampling"]
    assert (sampled["step"], sampled["server"], sampled["content"]) == ("digest", "fx", "one line")
    assert "one line" in cassette.read_text()
    replayed = lmflow(
        tmp_path, "run", file, "--replay", str(cassette), "--live-tools", "--no-log", tag=tag
    )
    assert replayed.code == 0, replayed.stderr
    assert replayed.stdout == live.stdout
    assert len(lm.chat_requests) == 1  # the replay asked the cassette, not the model
