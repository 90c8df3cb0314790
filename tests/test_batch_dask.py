"""`lmflow batch --dask` (runner/batch_dask.py) on a real LocalCluster and on a real
`dask scheduler` / `dask worker` pair on loopback, against the loopback fake LM Studio."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes.lmstudio import FakeLMStudio
from mcp_support import free_port, tagged_processes, wait_for_port, wait_until_gone
from test_batch import WORKFLOW, read_out, write_rows
from test_batch_servers import counted_server, starts_of, tool_workflow

import lmflow_runner

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster() -> Iterator[distributed.LocalCluster]:
    """Two worker processes with two threads each."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
    ) as local:
        yield local


def test_rows_on_a_local_cluster_share_servers_per_worker_process(
    tmp_path: Path,
    fake_lmstudio: FakeLMStudio,
    lmflow_cli: Callable[..., object],
    process_tag: str,
    cluster: distributed.LocalCluster,
) -> None:
    """Every row runs once on some worker; each worker process starts the MCP server once
    and keeps it for a later batch; closing the workers stops the servers."""
    starts = tmp_path / "starts.log"
    workflow = tool_workflow(tmp_path, counted_server(process_tag, starts))
    names = [f"n{i}" for i in range(10)]
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": name} for name in names])
    address = cluster.scheduler_address
    workers = set(cluster.scheduler_info["workers"])
    ran_on: set[str] = set()
    for batch in ("first", "second"):
        out = tmp_path / f"{batch}.jsonl"
        outcome = lmflow_cli(
            "batch", str(workflow), str(rows), "-o", str(out), "--no-log", "-q",
            "--base-url", fake_lmstudio.url, "--concurrency", "4", "--dask", address,
        )  # fmt: skip
        assert outcome.exit_code == 0, outcome.stderr  # type: ignore[attr-defined]
        records = read_out(out)
        assert sorted(r["line"] for r in records) == list(range(1, 11))
        assert {r["outputs"]["said"] for r in records} == {
            f"echo: Greet {n} 1 times" for n in names
        }
        assert {r["host"] for r in records} == {fake_lmstudio.url}
        ran_on |= {r["worker"] for r in records}
        assert ran_on <= workers
        assert starts_of(starts) == len(ran_on)  # once per worker process, over both batches
    assert len(tagged_processes(process_tag)) == len(ran_on)  # kept while the workers live
    cluster.close()
    assert wait_until_gone(process_tag) == []


@pytest.fixture
def scheduler() -> Iterator[str]:
    """A real `dask scheduler` on a free loopback port: its address."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_port(port, process, "dask scheduler")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=30)


def start_worker(address: str) -> subprocess.Popen[bytes]:
    """A real `dask worker` (no nanny: killing it loses the worker) with two threads."""
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
         "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_worker_killed_mid_batch_loses_no_row_and_writes_none_twice(
    tmp_path: Path, make_fake_lmstudio: Callable[..., FakeLMStudio], scheduler: str
) -> None:
    """Two workers, four rows at a time; one worker is killed while rows run on both: the
    scheduler runs its rows again on the other, and OUT has every row exactly once."""
    fake = make_fake_lmstudio(chat_delay=0.5)
    workflow = tmp_path / "greet.yaml"
    workflow.write_text(WORKFLOW)
    names = [f"n{i}" for i in range(12)]
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": name} for name in names])
    out = tmp_path / "out.jsonl"
    doomed, survivor = start_worker(scheduler), start_worker(scheduler)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        batch = subprocess.Popen(
            [sys.executable, "-m", "runner", "batch", str(workflow), str(rows), "-o", str(out),
             "--base-url", fake.url, "--concurrency", "4", "--no-log", "-q", "--dask", scheduler],
            cwd=tmp_path, env=env, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        # Wait until rows run on both workers (three or more asked and not answered: at most
        # two per worker), then kill one of them.
        while len(fake.chat_requests) - (out.read_text().count("\n") if out.exists() else 0) < 3:
            assert batch.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        doomed.send_signal(signal.SIGKILL)
        _, stderr = batch.communicate(timeout=90)
        assert batch.returncode == 0, stderr
    finally:
        for worker in (doomed, survivor):
            worker.kill()
            worker.wait()
    records = read_out(out)
    assert sorted(r["line"] for r in records) == list(range(1, 13))
    assert {r["status"] for r in records} == {"succeeded"}
    asked = Counter(body["messages"][-1]["content"].split()[1] for body in fake.chat_requests)
    assert set(asked) == set(names)
    assert sum(asked.values()) > len(names)  # the killed worker's rows were asked again


def test_dask_without_the_extra_is_a_bad_argument(
    tmp_path: Path, lmflow_cli: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    workflow = tmp_path / "greet.yaml"
    workflow.write_text(WORKFLOW)
    rows = write_rows(tmp_path / "rows.jsonl", [{"name": "ann"}])
    out = tmp_path / "out.jsonl"
    outcome = lmflow_cli(
        "batch", str(workflow), str(rows), "-o", str(out), "--dask", "tcp://127.0.0.1:1"
    )
    assert outcome.exit_code == 2  # type: ignore[attr-defined]
    assert "pip install 'lmflow-runner[dask]'" in outcome.stderr  # type: ignore[attr-defined]
    assert not out.exists()


def test_a_worker_refuses_a_workflow_that_is_not_the_coordinators(tmp_path: Path) -> None:
    """The workflow reaches workers by path and content: a missing file or another content
    at that path ends the row as `error`, saying which, before anything runs."""
    from lmflow_runner.batch_dask import RowWorker
    from lmflow_runner.batch_rows import file_digest

    workflow = tmp_path / "greet.yaml"
    workflow.write_text(WORKFLOW)
    digest = file_digest(workflow)
    workflow.write_text(WORKFLOW + "# changed on this worker\n")
    rows = RowWorker()
    rows.setup(worker=None)  # type: ignore[arg-type]
    try:
        options = lmflow_runner.RunOptions(write_log=False)
        changed = rows.run(str(workflow), digest, {"name": "ann"}, options, "tcp://w:1")
        missing = rows.run(str(tmp_path / "gone.yaml"), digest, {"name": "ann"}, options, "w")
    finally:
        rows.teardown(worker=None)  # type: ignore[arg-type]
    assert changed.status == "error" and changed.worker == "tcp://w:1"
    assert changed.error == f"{workflow} on worker tcp://w:1 differs from the coordinator's"
    assert missing.status == "error"
    assert (
        missing.error == f"worker w cannot read {tmp_path / 'gone.yaml'}: No such file or directory"
    )
