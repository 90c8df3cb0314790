"""Stop signals against real `lmflow run` processes with several badly behaved stdio servers.

The servers (tests/signal_runs.py): the fixture server named by a secret, one that ignores
stdin EOF and SIGTERM, and one that leaves a child in a process group of its own. After
every stop: the documented exit code, result.json saying what the last event says, no
process of the run left, and the secret in no file the run wrote.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes.lmstudio import FakeLMStudio
from mcp_support import new_tag, tagged_processes, wait_until_gone
from signal_runs import SCRIPT, SignalledRun, exit_code, start, stop, wait_for_event

from runner.runlog import MASK

Make = Callable[..., FakeLMStudio]
SEED = 20261130
FAULT_RUNS = 10
MID_CALL = '"name": "sleep", "arguments"'  # the agent step's call to the lingering server


def secret() -> str:
    return f"s3cret-{new_tag()[:12]}"


def assert_log_ends_as_told(run: SignalledRun) -> None:
    """result.json and the last event (run_finished, once) agree on how the run ended."""
    events = run.events()
    assert [e["type"] for e in events].count("run_finished") == 1
    last = events[-1]
    assert last["type"] == "run_finished"
    result = run.result()
    assert (result["status"], result.get("error")) == (last["status"], last["error"])


def assert_no_secret_written(cwd: Path, value: str) -> None:
    written = [path for path in (cwd / ".lmflow").rglob("*") if path.is_file()]
    leaks = [path.name for path in written if value.encode() in path.read_bytes()]
    assert leaks == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_run_like_ctrl_c(
    tmp_path: Path, make_fake_lmstudio: Make, signum: int
) -> None:
    tag, value = new_tag(), secret()
    process = start(tmp_path, make_fake_lmstudio(script=SCRIPT).url, tag, value)
    assert wait_for_event(process, tmp_path, MID_CALL)
    run = stop(process, tmp_path, [signum])
    # Everything of the run is gone by the time lmflow exits, not some time later.
    assert tagged_processes(tag) == []
    name = signal.Signals(signum).name
    assert run.code == exit_code(signum), run.stderr
    assert f"terminated by {name}" in run.stderr
    assert "Traceback" not in run.stderr
    assert_log_ends_as_told(run)
    assert (run.result()["status"], run.result()["error"]) == (
        "interrupted",
        f"terminated by {name}",
    )
    assert_no_secret_written(tmp_path, value)
    # The server did print the secret: masked as it was written.
    assert f"fixture server {MASK} starting" in (run.run_dir / "mcp-plain.stderr.log").read_text()


def test_a_second_ctrl_c_exits_and_still_stops_every_process(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    tag, value = new_tag(), secret()
    process = start(tmp_path, make_fake_lmstudio(script=SCRIPT).url, tag, value)
    assert wait_for_event(process, tmp_path, MID_CALL)
    run = stop(process, tmp_path, [signal.SIGINT, signal.SIGINT], gap=0.02)
    assert tagged_processes(tag) == []
    assert run.code == 130, run.stderr
    assert "Traceback" not in run.stderr
    assert_log_ends_as_told(run)
    assert run.result()["status"] == "interrupted"
    assert_no_secret_written(tmp_path, value)


def test_a_run_that_ends_on_its_own_leaves_no_process(
    tmp_path: Path, make_fake_lmstudio: Make
) -> None:
    """The lingering server ignores stdin EOF and SIGTERM; the spawner's child is in a group
    of its own: neither may outlive a run that simply succeeds."""
    tag, value = new_tag(), secret()
    process = start(tmp_path, make_fake_lmstudio(script=SCRIPT).url, tag, value)
    run = stop(process, tmp_path, [])
    assert tagged_processes(tag) == []
    assert run.code == 0, run.stderr
    assert_log_ends_as_told(run)
    assert run.result()["status"] == "succeeded"
    assert_no_secret_written(tmp_path, value)


@pytest.mark.parametrize("case", range(FAULT_RUNS))
def test_signals_at_random_points_of_a_run(
    tmp_path: Path, make_fake_lmstudio: Make, case: int
) -> None:
    """SIGINT or SIGTERM, once or twice, at a random moment from the first event to past the
    end of the run (seeded: a failure names its case and replays)."""
    chance = random.Random(SEED + case)
    signals = chance.choice(
        [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT], [signal.SIGTERM] * 2]
    )
    delay = chance.uniform(0.0, 3.0)
    tag, value = new_tag(), secret()
    process = start(tmp_path, make_fake_lmstudio(script=SCRIPT).url, tag, value)
    wait_for_event(process, tmp_path)
    with contextlib.suppress(subprocess.TimeoutExpired):  # still running: signal it now
        process.wait(timeout=delay)
    run = stop(process, tmp_path, signals, gap=chance.uniform(0.0, 0.3))
    assert wait_until_gone(tag) == []
    assert "Traceback" not in run.stderr
    assert_log_ends_as_told(run)
    status = run.result()["status"]
    if run.code == 0:
        assert status == "succeeded"
    else:
        assert run.signalled
        assert run.code == exit_code(signals[0]), run.stderr
        # A signal after run_finished stops only the printing of the outputs.
        assert status in {"interrupted", "succeeded"}
    assert_no_secret_written(tmp_path, value)
