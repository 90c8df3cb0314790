"""The `unordered-side-effects` warning by the tools' MCP annotations once their lists are
known (`validate --servers`, a run's start), by their names offline. The fixture server's
`--misleading-names` tools say the opposite with their names: `save_preview` is read-only,
`peek` destructive."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.lmstudio import down_url
from mcp_support import FIXTURE_SERVER, TAG_VARIABLE, new_tag, wait_until_gone

from runner.runlog import Event
from runner.runtime import RunOptions, run_workflow
from runner.spec import load_workflow

RULE = "unordered-side-effects"


@pytest.fixture
def tag() -> Iterator[str]:
    value = new_tag()
    yield value
    assert wait_until_gone(value) == []


def write(tmp_path: Path, tag: str, steps: str) -> Path:
    server = {
        "command": sys.executable,
        "args": [str(FIXTURE_SERVER), "--client-features", "--misleading-names"],
        "env": {TAG_VARIABLE: tag},
    }
    path = tmp_path / "wf.yaml"
    path.write_text(
        "version: 1\ndefaults: {model: qwen/qwen3-4b}\n"
        f"mcp_servers:\n  fx: {json.dumps(server)}\nsteps:\n{steps}"
    )
    return path


def warnings(lmflow_cli: Callable[..., Any], path: Path, *flags: str) -> list[tuple[int, str]]:
    done = lmflow_cli("validate", "--offline", *flags, "--format", "json", str(path))
    assert done.exit_code == 0, done.stdout
    problems = json.loads(done.stdout)["files"][0]["problems"]
    return [(p["line"], p["message"]) for p in problems if p["rule"] == RULE]


READ_ONLY_BY_ANNOTATION = """\
  - {id: preview, tool: fx.save_preview, with: {text: a}}
  - {id: look, tool: fx.lookup, with: {key: k}}
"""
WRITING_BY_ANNOTATION = """\
  - {id: take, tool: fx.peek, with: {key: k}}
  - {id: look, tool: fx.lookup, with: {key: k}}
  - {id: chat, mcp: [fx], prompt: hello}
"""


def test_validate_servers_trusts_a_read_only_annotation_over_the_name(
    tmp_path: Path, tag: str, lmflow_cli: Callable[..., Any]
) -> None:
    path = write(tmp_path, tag, READ_ONLY_BY_ANNOTATION)
    offline = warnings(lmflow_cli, path)
    assert offline == [
        (
            7,
            "steps 'preview' and 'look' may run at the same time and both use server 'fx'; "
            "'preview' may write through it (fx.save_preview)",
        )
    ]
    assert warnings(lmflow_cli, path, "--servers") == []


def test_validate_servers_finds_writers_that_names_and_allow_lists_hide(
    tmp_path: Path, tag: str, lmflow_cli: Callable[..., Any]
) -> None:
    path = write(tmp_path, tag, WRITING_BY_ANNOTATION)
    assert warnings(lmflow_cli, path) == []
    pair = "may run at the same time and both use server 'fx'"
    assert warnings(lmflow_cli, path, "--servers") == [
        (7, f"steps 'take' and 'look' {pair}; 'take' may write through it (peek: destructiveHint)"),
        (8, f"steps 'take' and 'chat' {pair}; 'take' may write through it (peek: destructiveHint)"),
        # Every tool of fx is on offer to the model: a destructive one first.
        (
            8,
            f"steps 'look' and 'chat' {pair}; 'chat' may write through it (store: destructiveHint)",
        ),
    ]


def test_a_run_warns_at_its_start_by_the_annotations(tmp_path: Path, tag: str) -> None:
    path = write(tmp_path, tag, WRITING_BY_ANNOTATION.rsplit("  - {id: chat", 1)[0])
    events: list[Event] = []
    result = asyncio.run(
        run_workflow(
            load_workflow(path),
            {},
            RunOptions(base_url=down_url(), runs_dir=tmp_path / "runs", sinks=(events.append,)),
        )
    )
    assert result.status == "succeeded"
    notices = [e.as_dict() for e in events if e.type == "notice"]
    assert [(n["rule"], n["line"], n["message"]) for n in notices] == [
        (
            RULE,
            7,
            "steps 'take' and 'look' may run at the same time and both use server 'fx'; "
            "'take' may write through it (peek: destructiveHint)",
        )
    ]
