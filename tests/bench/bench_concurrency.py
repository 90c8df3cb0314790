"""Benchmark: what concurrency buys, and what a run costs around its server's start.

Run: python tests/bench/bench_concurrency.py [--repeat N] [--latency S]
     (not collected by pytest: the name is bench_*)

Prints medians and ratios (targets from issue 9 in brackets), never asserts:

1. six independent steps and a join, the fake LM Studio answering after `latency`
   seconds, `defaults.concurrency: 8`, against one step alone [<= 2.6x, ideal 2x];
2. a `for_each` over 8 items at `concurrency: 4` against one item [<= 2.6x, ideal 2x],
   with the most requests the fake saw at once [never more than 4];
3. `lmflow run` of a one-step workflow with a stdio server (mcp-server-time) against
   `python -c "import mcp_server_time"` [<= 1.8x].

The engine's overhead on 50 zero-latency steps is bench_engine.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `fakes`

from bench_engine import median_seconds
from fakes.lmstudio import FakeLMStudio, FakeModel

from runner.runtime import RunOptions, run_workflow
from runner.spec import load_workflow

MODEL = "qwen/qwen3-4b"
HEAD = f"version: 1\nname: bench\ndefaults: {{model: {MODEL}, concurrency: 8}}\n"


def fan_out(width: int) -> str:
    steps = "".join(f"  - {{id: s{i}, prompt: 'part {i}'}}\n" for i in range(width))
    reads = " ".join(f"{{{{ steps.s{i}.output }}}}" for i in range(width))
    return HEAD + f"steps:\n{steps}  - {{id: join, prompt: 'all: {reads}'}}\n"


def for_each(items: int) -> str:
    values = ", ".join(f"item{i}" for i in range(items))
    return HEAD + (
        f"steps:\n  - id: each\n    for_each: [{values}]\n    concurrency: 4\n"
        "    prompt: '{{ item }}'\n"
    )


def timed_run(text: str, scratch: Path, url: str) -> Callable[[], None]:
    path = scratch / f"wf-{abs(hash(text))}.yaml"
    path.write_text(text)
    workflow = load_workflow(path)
    options = RunOptions(base_url=url, runs_dir=scratch / "runs", write_log=False)

    def run() -> None:
        result = asyncio.run(run_workflow(workflow, {}, options))
        assert result.status == "succeeded", result.error

    return run


def startup(repeat: int, scratch: Path, url: str) -> tuple[float, float]:
    """A one-step run with a stdio server, and that server's own import, as processes."""
    path = scratch / "time.yaml"
    path.write_text(
        HEAD
        + "mcp_servers:\n  time:\n    command: "
        + sys.executable
        + "\n    args: [-m, mcp_server_time, --local-timezone, UTC]\n"
        + "steps:\n  - {id: now, tool: time.get_current_time, with: {timezone: UTC}}\n"
    )
    env = {**os.environ, "LMFLOW_CACHE_DIR": str(scratch / "cache")}
    run = [sys.executable, "-m", "runner", "run", str(path), "--base-url", url, "--no-log", "-q"]
    imports = [sys.executable, "-c", "import mcp_server_time"]

    def call(command: list[str]) -> Callable[[], None]:
        return lambda: subprocess.run(command, env=env, check=True, capture_output=True)

    call(run)()  # warm up: the model cache, bytecode
    return median_seconds(call(run), repeat), median_seconds(call(imports), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lmflow-bench-"))
    os.environ["LMFLOW_CACHE_DIR"] = str(scratch / "cache")

    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)], chat_delay=args.latency) as lm:
        one = timed_run(HEAD + "steps:\n  - {id: s, prompt: once}\n", scratch, lm.url)
        one()  # warm up
        single = median_seconds(one, args.repeat)
        fan = median_seconds(timed_run(fan_out(6), scratch, lm.url), args.repeat)
        lm.peak_in_flight = 0
        each = median_seconds(timed_run(for_each(8), scratch, lm.url), args.repeat)
        peak = lm.peak_in_flight
    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)]) as lm:
        run, imports = startup(args.repeat, scratch, lm.url)

    print(f"medians of {args.repeat} runs, fake LM Studio answering after {args.latency} s:")
    print(f"  one step                     {single:6.2f} s")
    print(f"  6 steps + join, conc. 8      {fan:6.2f} s  {fan / single:4.2f}x one step  [<= 2.6x]")
    print(
        f"  for_each 8 items, conc. 4    {each:6.2f} s  {each / single:4.2f}x one item  "
        f"[<= 2.6x]; peak in flight {peak} [<= 4]"
    )
    print(
        f"  one-step run, stdio server   {run:6.2f} s  {run / imports:4.2f}x "
        f"`import mcp_server_time` ({imports:.2f} s)  [<= 1.8x]"
    )


if __name__ == "__main__":
    main()
