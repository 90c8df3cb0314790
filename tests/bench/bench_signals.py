"""Benchmark: how long `lmflow run` takes to stop on Ctrl-C, a double Ctrl-C and SIGTERM.

Run: python tests/bench/bench_signals.py [--repeat N] [--code DIR]
     (not collected by pytest: the name is bench_*)

The run is the one of tests/test_signals.py: three stdio servers, one of which ignores stdin
EOF and SIGTERM, another leaves a child in a process group of its own. The signal goes in
mid tool call. Printed per signal: the median seconds from the (first) signal to the exit
of lmflow, and to the moment no process of the run is left. `--code DIR` runs another copy
of the package (e.g. `git archive` of an older commit) to compare before and after.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the test helpers

from fakes.lmstudio import FakeLMStudio
from mcp_support import new_tag, tagged_processes
from signal_runs import SCRIPT, start, stop, wait_for_event

CASES = {
    "Ctrl-C": [signal.SIGINT],
    "double Ctrl-C": [signal.SIGINT, signal.SIGINT],
    "SIGTERM": [signal.SIGTERM],
}
MID_CALL = '"name": "sleep", "arguments"'
GONE_WITHIN = 10.0


def one(signals: list[int], code_dir: Path | None) -> tuple[float, float, int]:
    """(seconds to exit, seconds until no process is left, exit code) of one stopped run."""
    tag = new_tag()
    with tempfile.TemporaryDirectory() as directory, FakeLMStudio(script=SCRIPT) as lm:
        cwd = Path(directory)
        process = start(cwd, lm.url, tag, "bench-secret-value", code_dir=code_dir)
        wait_for_event(process, cwd, MID_CALL)
        sent = time.monotonic()
        run = stop(process, cwd, signals, gap=0.02, within=GONE_WITHIN)
        while tagged_processes(tag) and time.monotonic() - sent < GONE_WITHIN:
            time.sleep(0.01)
        gone = time.monotonic() - sent
        for line in tagged_processes(tag):
            print(f"    left after {GONE_WITHIN:g}s: {line}", file=sys.stderr)
    return run.exit_latency, gone, run.code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--code", type=Path, help="run this copy of the package instead")
    parser.add_argument("--case", choices=list(CASES), action="append", help="default: all")
    args = parser.parse_args()
    for name in args.case or CASES:
        signals = CASES[name]
        results = [one(signals, args.code) for _ in range(args.repeat)]
        exits = statistics.median(r[0] for r in results)
        gone = statistics.median(r[1] for r in results)
        codes = sorted({r[2] for r in results})
        print(f"{name:14} exit {exits:6.3f}s  all processes gone {gone:6.3f}s  codes {codes}")


if __name__ == "__main__":
    main()
