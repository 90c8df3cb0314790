"""Benchmark: `lmflow batch` throughput over two hosts, memory over many rows, per-row cost.

Run: python tests/bench/bench_batch.py [--rows N] [--memory-rows N] [--latency S]
     (not collected by pytest: the name is bench_*)

Prints figures and ratios (targets from issue 12 in brackets), never asserts:

1. 200 rows x 1 model step over two fake hosts answering after 0.2 s, 4 slots each (as
   the hosts report them: `parallel` 4): rows/s and the ratio to the ideal
   8 / 0.2 s = 40 rows/s [>= 0.8];
2. peak memory (ru_maxrss of a fresh process) of a 10,000-row batch at zero latency
   against a 100-row one [grows by <= 50 MB: ROWS and OUT are streamed];
3. the time per row of a batch run one row at a time against one `run_workflow` call;
4. rows with an MCP tool step (the fixture server over stdio) and a model step at zero
   latency, 4 at a time: rows/s with the server started per row (its settings read the
   row) against started once and shared by the rows, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `fakes`

from bench_engine import interleaved_medians, median_seconds
from fakes.lmstudio import FakeLMStudio, FakeModel
from mcp_support import FIXTURE_SERVER

from runner.api import RunOptions, load_workflow, run_workflow
from runner.batch import Batch, RowOutcome, run_batch
from runner.batch_hosts import Host, HostChoice

MODEL = "qwen/qwen3-coder-30b"  # loaded on the fake by default
WORKFLOW = f"""version: 1
name: bench-batch
defaults: {{model: {MODEL}}}
inputs:
  text: {{type: string}}
steps:
  - {{id: answer, prompt: "{{{{ inputs.text }}}}"}}
outputs:
  answer: "{{{{ steps.answer.output }}}}"
"""


class Quiet:
    """An observer that only counts."""

    def __init__(self) -> None:
        self.succeeded = 0

    def started(self, total: int, already_done: int) -> None:
        pass

    def finished(self, outcome: RowOutcome) -> None:
        self.succeeded += outcome.status == "succeeded"

    def host_down(self, host: str | None, reason: str) -> None:
        pass

    def host_ready(self, host: Host) -> None:
        pass


def scratch_batch(
    scratch: Path, rows: int, hosts: list[str], slots: int | None, concurrency: int | None
) -> Batch:
    workflow_path = scratch / "wf.yaml"
    workflow_path.write_text(WORKFLOW)
    rows_path = scratch / f"rows-{rows}.jsonl"
    with rows_path.open("w") as stream:
        for index in range(rows):
            stream.write(json.dumps({"text": f"row {index}"}) + "\n")
    out = scratch / f"out-{rows}-{time.monotonic_ns()}.jsonl"
    return Batch(
        workflow=load_workflow(workflow_path),
        rows=rows_path,
        out=out,
        hosts=[HostChoice(url) for url in hosts],
        slots=slots,
        concurrency=concurrency,
        options=RunOptions(write_log=False, runs_dir=scratch / "runs"),
    )


def throughput(rows: int, latency: float) -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        FakeLMStudio(chat_delay=latency, models=[FakeModel(MODEL, loaded=True, parallel=4)]) as one,
        FakeLMStudio(chat_delay=latency, models=[FakeModel(MODEL, loaded=True, parallel=4)]) as two,
    ):
        batch = scratch_batch(Path(folder), rows, [one.url, two.url], None, None)
        observer = Quiet()
        started = time.perf_counter()
        asyncio.run(run_batch(batch, observer))
        seconds = time.perf_counter() - started
    rate = rows / seconds
    ideal = 8 / latency
    print(
        f"1. {rows} rows, 2 hosts x 4 slots, {latency}s latency: {rate:.1f} rows/s "
        f"({observer.succeeded} succeeded), {rate / ideal:.2f}x of ideal {ideal:.0f} rows/s "
        "[>= 0.8]"
    )


def peak_rss_mb(rows: int) -> float:
    """ru_maxrss of a fresh process that runs a batch of `rows` (MB)."""
    child = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(rows)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(child.stdout.split()[-1])


class Forgetful(Quiet):
    """Empties the in-process fake's record of requests as rows finish: that record is the
    fake's memory (it grows with every request), not the batch's."""

    def __init__(self, server: FakeLMStudio) -> None:
        super().__init__()
        self.server = server

    def finished(self, outcome: RowOutcome) -> None:
        super().finished(outcome)
        self.server.requests.clear()


def memory_child(rows: int) -> None:
    with tempfile.TemporaryDirectory() as folder, FakeLMStudio() as server:
        batch = scratch_batch(Path(folder), rows, [server.url], 8, 8)
        asyncio.run(run_batch(batch, Forgetful(server)))
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    print(kilobytes / 1024)


def memory(rows: int) -> None:
    small, large = peak_rss_mb(100), peak_rss_mb(rows)
    print(
        f"2. peak memory: 100 rows {small:.1f} MB, {rows} rows {large:.1f} MB: "
        f"+{large - small:.1f} MB [<= 50 MB]"
    )


def per_row_cost(rows: int = 50) -> None:
    with tempfile.TemporaryDirectory() as folder, FakeLMStudio() as server:
        batch = scratch_batch(Path(folder), rows, [server.url], 1, 1)
        options = RunOptions(base_url=server.url, write_log=False)

        def one_run() -> None:
            asyncio.run(run_workflow(batch.workflow, {"text": "one"}, options))

        single = median_seconds(one_run, 9)
        started = time.perf_counter()
        asyncio.run(run_batch(batch, Quiet()))
        per_row = (time.perf_counter() - started) / rows
    print(
        f"3. per row, one at a time: {per_row * 1000:.1f} ms against one run_workflow "
        f"{single * 1000:.1f} ms: {per_row / single:.2f}x"
    )


def shared_servers(rows: int = 40, repeat: int = 5) -> None:
    """Per-row servers against shared ones: the same workflow but for one setting of the
    server that reads the row, which makes it start per row (docs/batch.md#mcp-servers)."""
    server = {"command": sys.executable, "args": [str(FIXTURE_SERVER)]}
    per_row = {**server, "env": {"ROW": "{{ inputs.text }}"}}
    with tempfile.TemporaryDirectory() as folder, FakeLMStudio() as fake:
        scratch = Path(folder)

        def batch_of(name: str, entry: dict[str, object]) -> Callable[[], None]:
            path = scratch / f"{name}.yaml"
            path.write_text(
                WORKFLOW.replace(
                    "steps:\n", f"mcp_servers:\n  fx: {json.dumps(entry)}\nsteps:\n"
                ).replace(
                    "{id: answer,", "{id: echo, tool: fx.echo, with: {text: x}}\n  - {id: answer,"
                )
            )
            workflow = load_workflow(path)

            def run() -> None:
                batch = scratch_batch(scratch, rows, [fake.url], 4, 4)
                asyncio.run(run_batch(dataclasses.replace(batch, workflow=workflow), Quiet()))

            return run

        medians = interleaved_medians(
            {"per row": batch_of("per-row", per_row), "shared": batch_of("shared", server)},
            repeat,
        )
    per_row_rate, shared_rate = (rows / medians[name][0] for name in ("per row", "shared"))
    print(
        f"4. {rows} rows with an MCP tool step, 4 at a time: servers per row "
        f"{per_row_rate:.1f} rows/s, shared {shared_rate:.1f} rows/s: "
        f"{shared_rate / per_row_rate:.1f}x (medians of {repeat})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--memory-rows", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return
    throughput(args.rows, args.latency)
    memory(args.memory_rows)
    per_row_cost()
    shared_servers()


if __name__ == "__main__":
    main()
