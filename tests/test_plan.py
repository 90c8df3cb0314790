"""The plan stage: one dependency graph for the validator and the executor."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import main
from runner.spec import check_file
from runner.spec.plan import cycles

LONG = 989  # enough steps to pass Python's default recursion limit in a recursive walk


def chain(tmp_path: Path, closing: bool) -> Path:
    """`LONG` steps, each needing the next one (forward `needs:`); optionally the last
    needs the first, closing a cycle through all of them."""
    lines = ["version: 1", "defaults: {model: qwen/qwen3-8b}", "steps:"]
    for i in range(LONG):
        after = i + 1 if i + 1 < LONG else (0 if closing else None)
        needs = f", needs: [s{after}]" if after is not None else ""
        lines.append(f"  - {{id: s{i}, prompt: x{needs}}}")
    path = tmp_path / "chain.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_long_forward_needs_chain_validates_without_recursion_error(tmp_path) -> None:
    workflow, problems = check_file(chain(tmp_path, closing=False))
    assert problems == []
    assert workflow is not None
    assert workflow.plan.dependencies()["s0"] == {"s1"}


def test_a_cycle_through_a_long_chain_is_one_problem_at_the_first_step(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = chain(tmp_path, closing=True)
    _, problems = check_file(path)
    assert [(p.rule, p.line) for p in problems] == [("needs-cycle", 4)]
    assert problems[0].message.startswith("steps wait for each other: s0 -> s1 -> s2")
    with pytest.raises(SystemExit) as done:
        main(["validate", "--offline", str(path)])
    assert done.value.code == 2
    assert f"{path}:4:" in capsys.readouterr().out


def test_cycles_reports_each_distinct_loop_once() -> None:
    graph = {0: {1}, 1: {0, 2}, 2: {3}, 3: {2}, 4: set()}
    assert cycles(graph) == [[0, 1], [2, 3]]


# --- validation of the concurrent engine's keys --------------------------------------------


def problems_of(
    tmp_path: Path, body: str, defaults: str = "{model: qwen/qwen3-8b}"
) -> list[tuple[str, int, str]]:
    path = tmp_path / "wf.yaml"
    path.write_text(f"version: 1\ndefaults: {defaults}\n" + body)
    _, problems = check_file(path)
    return [(p.rule, p.line, p.severity) for p in problems]


def test_a_for_each_that_is_not_a_list_is_an_error(tmp_path) -> None:
    body = """\
inputs:
  topic: {type: string}
  topics: {type: array}
steps:
  - id: one
    output_schema: {type: object}
    prompt: x
  - {id: a, for_each: "{{ inputs.topic }}", prompt: "{{ item }}"}
  - {id: b, for_each: "{{ steps.one.output }}", prompt: "{{ item }}"}
  - {id: c, for_each: just text, prompt: "{{ item }}"}
  - {id: d, for_each: "{{ inputs.topics }}", prompt: "{{ item }}"}
  - {id: e, for_each: [x, y], prompt: "{{ loop.index }}: {{ item }}"}
  - {id: f, for_each: "{{ inputs.topics | reverse | list }}", prompt: "{{ item }}"}
"""
    assert problems_of(tmp_path, body) == [
        ("for-each-not-a-list", 10, "error"),
        ("for-each-not-a-list", 11, "error"),
        ("for-each-not-a-list", 12, "error"),
    ]


def test_item_outside_a_for_each_step_is_an_error(tmp_path) -> None:
    body = """\
steps:
  - {id: a, prompt: "{{ item }}"}
  - id: b
    prompt: "{{ loop.index }}"
  - {id: c, prompt: "{% for x in [1, 2] %}{{ loop.index }}{% endfor %}"}
"""
    assert problems_of(tmp_path, body) == [
        ("item-outside-for-each", 4, "error"),
        ("item-outside-for-each", 6, "error"),
    ]


def test_a_concurrency_below_one_is_an_error(tmp_path) -> None:
    body = """\
mcp_servers:
  fx: {command: fx, max_concurrent_calls: 0}
steps:
  - {id: a, for_each: [1], concurrency: 0, prompt: x}
  - {id: b, concurrency: 2, prompt: x}
"""
    assert problems_of(tmp_path, body, "{model: qwen/qwen3-8b, concurrency: 0}") == [
        ("bad-value", 2, "error"),
        ("bad-value", 4, "error"),
        ("bad-value", 6, "error"),
        ("concurrency-without-for-each", 7, "warning"),
    ]


def test_unordered_steps_sharing_a_writing_server_get_a_warning(tmp_path) -> None:
    body = """\
mcp_servers:
  fs: {command: fs}
steps:
  - {id: save, tool: fs.write_file, with: {path: a, content: b}}
  - {id: look, mcp: [fs], prompt: read a}
  - {id: ordered, needs: save, mcp: [fs], prompt: read a}
  - {id: reads, tool: fs.read_file, with: {path: a}}
"""
    assert problems_of(tmp_path, body) == [
        ("unordered-side-effects", 7, "warning"),
        ("unordered-side-effects", 9, "warning"),
    ]
