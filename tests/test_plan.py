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
