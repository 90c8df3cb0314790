"""`lmflow run` as a subprocess with several badly behaved stdio servers, stopped by signals.

Shared by tests/test_signals.py (random faults, asserted) and tests/bench/bench_signals.py
(how long the stop takes, measured). The servers are the fixture server three ways: a plain
one named by a secret (so the secret reaches its stderr and its tool results), one that
ignores stdin EOF and SIGTERM (`--linger`), and one that leaves a child in a process group
of its own (`--spawn-child`). Every process carries the tag.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_support import FIXTURE_SERVER, TAG_VARIABLE

MODEL = "qwen/qwen3-coder-30b"  # loaded on the fake by default
SECRET_VARIABLE = "LMFLOW_TEST_SECRET"
SCRIPT = [[("sleep", {"seconds": 0.5})], "done"]
"""The fake LM Studio's turns: the agent step calls `sleep` on the lingering server."""


def _server(tag: str, *args: str) -> str:
    return json.dumps(
        {
            "command": sys.executable,
            "args": [str(FIXTURE_SERVER), *args],
            "env": {TAG_VARIABLE: tag},
        }
    )


def write_workflow(directory: Path, tag: str) -> Path:
    path = directory / "faults.yaml"
    path.write_text(
        f"""version: 1
name: faults
defaults: {{model: {MODEL}}}
mcp_servers:
  plain: {_server(tag, "--name", "{{ env." + SECRET_VARIABLE + " }}")}
  stubborn: {_server(tag, "--name", "stubborn", "--linger")}
  spawner: {_server(tag, "--name", "spawner", "--spawn-child")}
steps:
  - {{id: read, tool: plain.read_file, with: {{path: notes}}}}
  - {{id: wait, tool: spawner.sleep, with: {{seconds: 0.5}}}}
  - {{id: ask, mcp: [stubborn], needs: [read, wait], prompt: Sleep then answer.}}
outputs:
  read: "{{{{ steps.read.output }}}}"
  said: "{{{{ steps.ask.output }}}}"
"""
    )
    return path


@dataclass
class SignalledRun:
    """One `lmflow run` that was sent signals: its exit, and what it left in `cwd`."""

    code: int
    stderr: str
    signalled: bool
    """False when the run ended before the first signal went out."""
    exit_latency: float
    """Seconds from the first signal to the exit of lmflow."""
    cwd: Path

    @property
    def run_dir(self) -> Path:
        (found,) = (self.cwd / ".lmflow" / "runs").iterdir()
        return found

    def events(self) -> list[dict[str, Any]]:
        lines = (self.run_dir / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def result(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.run_dir / "result.json").read_text())
        return loaded


def start(
    cwd: Path, lm_url: str, tag: str, secret: str, *, code_dir: Path | None = None
) -> subprocess.Popen[str]:
    """`lmflow run faults.yaml`; `code_dir` runs another copy of the package (a bench of the
    code before a change)."""
    env = {**os.environ, "LMFLOW_CACHE_DIR": str(cwd / "cache"), TAG_VARIABLE: tag}
    env[SECRET_VARIABLE] = secret
    for name in ("LMFLOW_BASE_URL", "LM_API_TOKEN"):
        env.pop(name, None)
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir)
    write_workflow(cwd, tag)
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "faults.yaml", "--base-url", lm_url],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_event(
    process: subprocess.Popen[str], cwd: Path, text: str = "", within: float = 60.0
) -> bool:
    """Wait until events.jsonl exists and holds `text`; False when lmflow exited first."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        for log in (cwd / ".lmflow" / "runs").glob("*/events.jsonl"):
            if text in log.read_text():
                return True
        time.sleep(0.01)
    raise TimeoutError(f"no event with {text!r} within {within}s")


def stop(
    process: subprocess.Popen[str],
    cwd: Path,
    signals: Sequence[int],
    gap: float = 0.05,
    within: float = 60.0,
) -> SignalledRun:
    """Send `signals` (`gap` seconds apart) unless lmflow has already exited; wait for it
    (`within` seconds at most, then it is killed: exit code -9)."""
    try:
        signalled = process.poll() is None
        sent = time.monotonic()
        for signum in signals:
            if process.poll() is not None:
                break
            process.send_signal(signum)
            time.sleep(gap)
        while process.poll() is None and time.monotonic() - sent < within:
            time.sleep(0.002)
        latency = time.monotonic() - sent
        if process.poll() is None:
            process.kill()
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return SignalledRun(process.returncode, err, signalled, latency, cwd)


def exit_code(signum: int) -> int:
    """The documented exit code of a run stopped by `signum`."""
    return 128 + signal.Signals(signum).value
