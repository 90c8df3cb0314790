"""Benchmark: the cost of a large tool result, per MB, through a real run.

Run: python tests/bench/bench_large_results.py [--sizes 1 10 20 50] [--repeat N]
     (not collected by pytest: the name is bench_*)

Each run is one agent step against the fake LM Studio: the model calls the fixture MCP
server's `blob` tool (a real stdio process) for N MB of text, then answers. The time is from
the `tool_call` event to `step_finished`: the server making and sending the result, reading
it from the pipe, the cap, events.jsonl and the result file, the second chat request; not
the start and stop of the server, which do not depend on the size. A cost that grows faster
than the result shows up as a rising time per MB against the 1 MB case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `fakes`, `mcp_support`

from fakes.lmstudio import FakeLMStudio, FakeModel
from mcp_support import FIXTURE_SERVER

from runner.runlog import Event
from runner.runtime import RunOptions, run_workflow
from runner.spec import load_workflow

MODEL = "qwen/qwen3-4b"
MB = 1_000_000


def workflow_text() -> str:
    return "\n".join(
        [
            "version: 1",
            "name: bench-large-results",
            f"defaults: {{model: {MODEL}}}",
            "mcp_servers:",
            "  fixture:",
            f"    command: {json.dumps(sys.executable)}",
            f"    args: [{json.dumps(str(FIXTURE_SERVER))}]",
            "steps:",
            "  - {id: fetch, mcp: [fixture], prompt: Fetch the blob.}",
        ]
    )


def run_once(path: Path, url: str, runs_dir: Path) -> float:
    """Seconds from the tool call to the end of the step."""
    marks: dict[str, float] = {}

    def mark(event: Event) -> None:
        marks.setdefault(event.type, time.perf_counter())

    options = RunOptions(base_url=url, runs_dir=runs_dir, sinks=(mark,))
    result = asyncio.run(run_workflow(load_workflow(path), {}, options))
    assert result.status == "succeeded", result.error
    return marks["step_finished"] - marks["tool_call"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 10, 20, 50])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lmflow-bench-"))
    os.environ["LMFLOW_CACHE_DIR"] = str(scratch / "cache")
    path = scratch / "bench.yaml"
    path.write_text(workflow_text())

    def median_run(characters: int) -> float:
        script = [[("blob", {"characters": characters})], "done"] * (args.repeat + 1)
        with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], script=script) as lm:
            run_once(path, lm.url, scratch / "runs")  # warm up: imports, model cache
            return statistics.median(
                run_once(path, lm.url, scratch / "runs") for _ in range(args.repeat)
            )

    print(f"one tool result of N MB, tool call to end of step, medians of {args.repeat} runs")
    baseline: float | None = None
    for size in sorted(args.sizes):
        seconds = median_run(int(size * MB))
        per_mb = seconds / size
        baseline = baseline or per_mb
        print(
            f"  {size:6g} MB  {seconds:8.2f} s  {per_mb:7.3f} s/MB"
            f"  ratio per MB {per_mb / baseline:5.2f}x  peak RSS so far {peak_rss_mb():6.0f} MB"
        )


if __name__ == "__main__":
    main()
