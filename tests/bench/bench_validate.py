"""Benchmark: offline validation of generated workflows of 10, 100 and 1000 steps.

Run: python tests/bench/bench_validate.py   (not collected by pytest: the name is bench_*)

The workflows are realistic: prompts that read earlier steps, MCP servers and tool
allow-lists, `tool:` steps, `needs:`, `if:` conditions and output_schema fields read by
later steps. The cost should grow linearly: the time per step stays about the same.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from runner.spec import check_file, parse_document, validate_document

SIZES = (10, 100, 1000)
ROUNDS = 7

HEADER = """\
version: 1
name: bench-{n}
description: A generated workflow of {n} steps.
models:
  coder: qwen/qwen3-coder-30b
  thinker: mistralai/magistral-small-2509
defaults:
  model: coder
  max_rounds: 5
  temperature: 0.2
inputs:
  path: {{type: string, default: ".", description: Directory to survey}}
  top: {{type: integer, default: 3, minimum: 1, maximum: 20}}
mcp_servers:
  fs:
    command: npx
    args: ["-y", "@modelcontextprotocol/server-filesystem", "{{{{ inputs.path }}}}"]
  memory:
    command: npx
    args: ["-y", "@modelcontextprotocol/server-memory"]
  search:
    url: http://127.0.0.1:8931/mcp
    headers: {{Authorization: "Bearer {{{{ env.SEARCH_TOKEN }}}}"}}
steps:
"""


def step(i: int) -> str:
    """Step i reads a few earlier steps; every 10th is a direct tool call."""
    if i % 10 == 0:
        return (
            f"  - id: s{i}\n"
            f"    tool: fs.read_text_file\n"
            f'    with: {{path: "{{{{ inputs.path }}}}/docs/part{i}.md"}}\n'
        )
    lines = [f"  - id: s{i}", f"    name: Step {i}"]
    if i % 3 == 0:
        lines.append("    model: thinker")
    if i % 2:
        lines.append("    mcp: [fs, memory]")
        if i % 4 == 1:
            lines.append("    tools: [fs.read_text_file, list_directory, create_entities]")
    if i >= 2 and i % 7 == 0:
        lines.append(f"    needs: [s{i - 2}]")
    if i % 6 == 0:
        lines.append(f"    if: steps.s{i - 1}.status == 'ok' and inputs.top > 1")
    schema_step = (i - 1) // 5 * 5  # the latest multiple of 5 before i: it may have a schema
    lines += ["    prompt: |", f"      Part {i} of the survey of {{{{ inputs.path }}}}."]
    if i > 1:
        lines.append(f"      The previous step said: {{{{ steps.s{i - 1}.output }}}}")
        lines.append(f"      An earlier step said: {{{{ steps.s{i // 2}.output }}}}")
    if i > 5 and schema_step % 10:
        lines.append(f"      Its summary: {{{{ steps.s{schema_step}.output.summary }}}}")
    lines.append("      {% if inputs.top > 2 %}Be thorough.{% endif %}")
    if i % 5 == 0:
        lines += [
            "    output_schema:",
            "      type: object",
            "      properties:",
            "        summary: {type: string}",
            "        files: {type: array, items: {type: string}}",
            "      required: [summary]",
        ]
    return "\n".join(lines) + "\n"


def workflow_text(n: int) -> str:
    steps = "".join(step(i) for i in range(1, n + 1))
    return HEADER.format(n=n) + steps + f'outputs:\n  last: "{{{{ steps.s{n}.output }}}}"\n'


def median_seconds(function: Callable[[], object], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="lmflow-bench-"))
    print(f"{'steps':>6} {'lines':>7} {'parse ms':>9} {'checks ms':>10} {'total ms':>9} "
          f"{'ms/step':>8} {'ratio':>6}")  # fmt: skip
    base: float | None = None
    for n in SIZES:
        path = directory / f"bench-{n}.yaml"
        text = workflow_text(n)
        path.write_text(text, encoding="utf-8")
        workflow, problems = check_file(path)
        if workflow is None:
            for problem in problems[:5]:
                print(problem, file=sys.stderr)
            return 1
        doc = parse_document(text, str(path))
        parse = median_seconds(partial(parse_document, text, str(path)))
        checks = median_seconds(partial(validate_document, doc))
        total = median_seconds(partial(check_file, path))
        per_step = total / n
        base = base or per_step
        print(
            f"{n:>6} {text.count(chr(10)):>7} {parse * 1e3:>9.1f} {checks * 1e3:>10.1f} "
            f"{total * 1e3:>9.1f} {per_step * 1e3:>8.3f} {per_step / base:>6.2f}"
        )
    print("ratio: time per step relative to the 10-step workflow (about 1 means linear growth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
