"""Benchmark: the engine's own overhead on a 50-step workflow, against a bare httpx loop.

Run: python tests/bench/bench_engine.py [--steps N] [--repeat N]
     (not collected by pytest: the name is bench_*)

Both sides talk to the same fake LM Studio with zero latency and make the same chat
requests (the bare loop replays the exact bodies the engine sent, streamed when they say
so, reading the events as lmflow does), so the difference is
what lmflow adds per run: the model check (a disk-cache hit), planning, template rendering,
the agent loop, events, and, in the first variant, writing events.jsonl and result.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `fakes`

from fakes.lmstudio import FakeLMStudio, FakeModel

from runner.runtime import RunOptions, run_workflow
from runner.spec import load_workflow
from runner.spec.model import Workflow

MODEL = "qwen/qwen3-4b"


def workflow_text(steps: int) -> str:
    """Each step reads the previous one, so planning and rendering do real work."""
    lines = [
        "version: 1",
        "name: bench",
        f"defaults: {{model: {MODEL}, temperature: 0.2}}",
        "inputs:",
        "  topic: {type: string, default: benchmarks}",
        "steps:",
        "  - {id: s0, prompt: 'Start on {{ inputs.topic }}.'}",
    ]
    for i in range(1, steps):
        lines.append(
            f"  - {{id: s{i}, prompt: 'Step {i}, after {{{{ steps.s{i - 1}.output | length }}}}"
            " characters.'}"
        )
    lines.append("outputs:")
    lines.append(f"  last: '{{{{ steps.s{steps - 1}.output }}}}'")
    return "\n".join(lines) + "\n"


def engine(workflow: Workflow, url: str, runs_dir: Path, write_log: bool) -> Callable[[], None]:
    options = RunOptions(base_url=url, runs_dir=runs_dir, write_log=write_log)

    def run() -> None:
        result = asyncio.run(run_workflow(workflow, {}, options))
        assert result.status == "succeeded", result.error

    return run


def bare_loop(url: str, bodies: Sequence[Mapping[str, Any]]) -> Callable[[], None]:
    """The same requests with nothing around them: one client, one POST after another.

    Its TLS context is built once, as lmflow's is (building one costs ~15 ms per client,
    which would otherwise count against the bare loop only)."""
    tls = httpx.create_ssl_context()

    async def go() -> None:
        async with httpx.AsyncClient(base_url=url, verify=tls) as client:
            for body in bodies:
                if body.get("stream"):  # as lmflow does: read the events, parse each piece
                    async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                        reply.raise_for_status()
                        async for line in reply.aiter_lines():
                            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                                json.loads(line[5:])
                else:
                    response = await client.post("/v1/chat/completions", json=body)
                    response.raise_for_status()
                    response.json()

    return lambda: asyncio.run(go())


def median_seconds(function: Callable[[], None], repeat: int) -> float:
    """Median wall time of `repeat` calls of `function`."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    variants: Mapping[str, Callable[[], None]], repeat: int
) -> dict[str, tuple[float, float]]:
    """Median wall time and median CPU time of this thread (the client side: the fake
    server runs in threads of its own) of each variant, in seconds. The variants run in
    turns (A, B, C, A, B, C, ...) so that a load change on a shared machine hits all alike;
    CPU time is the steadier figure when other work competes for the cores."""
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, function in variants.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            function()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in variants
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lmflow-bench-"))
    os.environ["LMFLOW_CACHE_DIR"] = str(scratch / "cache")
    path = scratch / "bench.yaml"
    path.write_text(workflow_text(args.steps))
    workflow = load_workflow(path)

    with FakeLMStudio(models=[FakeModel(MODEL, loaded=True)]) as lm:  # echo mode, no delay
        with_log = engine(workflow, lm.url, scratch / "runs", write_log=True)
        without_log = engine(workflow, lm.url, scratch / "runs", write_log=False)
        with_log()  # warm up: imports, the model cache, the connection path
        bodies = lm.chat_requests[-args.steps :]
        assert len(bodies) == args.steps
        bare = bare_loop(lm.url, bodies)
        bare()
        medians = interleaved_medians(
            {
                "bare httpx loop": bare,
                "engine, no run log": without_log,
                "engine, events.jsonl": with_log,
            },
            args.repeat,
        )
    bare_wall, bare_cpu = medians.pop("bare httpx loop")
    print(f"{args.steps} chat requests, zero-latency fake, medians of {args.repeat} runs:")
    print(f"  {'':22} {'wall':>8}    {'ratio':>5}   {'client CPU':>10}   {'ratio':>5}")
    print(f"  {'bare httpx loop':22} {bare_wall * 1e3:5.1f} ms           {bare_cpu * 1e3:7.1f} ms")
    for name, (wall, cpu) in medians.items():
        print(
            f"  {name:22} {wall * 1e3:5.1f} ms  {wall / bare_wall:5.2f}x  {cpu * 1e3:7.1f} ms"
            f"  {cpu / bare_cpu:5.2f}x  (+{(cpu - bare_cpu) / args.steps * 1e3:.2f} ms CPU/step)"
        )


if __name__ == "__main__":
    main()
