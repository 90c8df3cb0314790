"""`lmflow runs list` and `lmflow runs show`: the history, tolerant of broken runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def lmflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
    )


def make_run(root: Path, run_id: str, result: Any = None, events: str | None = None) -> Path:
    run_dir = root / ".lmflow" / "runs" / run_id
    run_dir.mkdir(parents=True)
    if result is not None:
        text = result if isinstance(result, str) else json.dumps(result)
        (run_dir / "result.json").write_text(text)
    if events is not None:
        (run_dir / "events.jsonl").write_text(events)
    return run_dir


FAILED = {
    "run_id": "20260102-090000-bbbbbb",
    "workflow": "changelog",
    "status": "failed",
    "outputs": {"changelog": None, "entries": [{"category": "Added"}]},
    "error": "step 'write' failed: no final answer after 3 rounds",
    "duration": 12.25,
    "steps": [
        {"id": "log", "status": "succeeded", "tool_calls": 1, "duration": 0.1},
        {"id": "write", "status": "failed", "rounds": 3, "error": "no final answer after 3 rounds"},
        {"id": "tidy", "status": "skipped", "reason": "the run stopped after step 'write' failed"},
    ],
}


@pytest.fixture
def history(tmp_path: Path) -> Path:
    make_run(
        tmp_path,
        "20260101-080000-aaaaaa",
        {"workflow": "meeting-planner", "status": "succeeded", "duration": 1.5, "outputs": {}},
    )
    make_run(tmp_path, "20260102-090000-bbbbbb", FAILED)
    make_run(
        tmp_path,
        "20260103-100000-cccccc",
        events='{"seq": 1, "type": "run_started", "workflow": "repo-survey"}\n',
    )
    make_run(tmp_path, "20260104-110000-dddddd", "{not json")
    return tmp_path


def test_list_is_newest_first_and_tolerant(history: Path) -> None:
    done = lmflow("runs", "list", cwd=history)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "20260104-110000-dddddd",
        "20260103-100000-cccccc",
        "20260102-090000-bbbbbb",
        "20260101-080000-aaaaaa",
    ]
    assert "unknown" in lines[0] and "result.json is unreadable" in lines[0]
    assert "repo-survey" in lines[1] and "no result.json" in lines[1]
    assert "failed" in lines[2] and "12.2s" in lines[2] and "changelog" in lines[2]
    assert "2026-01-01 08:00:00 UTC" in lines[3] and "meeting-planner" in lines[3]


def test_list_json_and_limit(history: Path) -> None:
    done = lmflow("runs", "list", "--json", "-n", "2", cwd=history)
    rows = json.loads(done.stdout)
    assert [r["run_id"] for r in rows] == ["20260104-110000-dddddd", "20260103-100000-cccccc"]
    assert rows[1]["workflow"] == "repo-survey" and rows[1]["status"] == "unknown"


def test_list_without_runs(tmp_path: Path) -> None:
    done = lmflow("runs", "list", cwd=tmp_path)
    assert done.returncode == 0
    assert "no runs under" in done.stdout


def test_show_steps_outputs_and_failures(history: Path) -> None:
    done = lmflow("runs", "show", "20260102", cwd=history)  # a unique prefix is enough
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "run 20260102-090000-bbbbbb: changelog" in out
    assert "status: failed" in out
    assert "error: step 'write' failed: no final answer after 3 rounds" in out
    assert "write: failed  (3 round(s))" in out
    assert "tidy: skipped" in out and "reason: the run stopped after step 'write' failed" in out
    assert 'entries: [{"category": "Added"}]' in out


def test_show_last_and_events(history: Path) -> None:
    done = lmflow("runs", "show", "last", cwd=history)
    assert done.returncode == 0
    assert "run 20260104-110000-dddddd" in done.stdout
    assert "result.json is unreadable" in done.stdout
    # its events.jsonl is missing altogether: a message, not a traceback
    done = lmflow("runs", "show", "last", "--events", cwd=history)
    assert done.returncode == 2
    assert "has no events.jsonl" in done.stderr and "Traceback" not in done.stderr

    done = lmflow("runs", "show", "20260103", "--events", cwd=history)
    assert done.returncode == 0
    assert '"workflow": "repo-survey"' in done.stdout


@pytest.mark.parametrize(("run_id", "message"), [("2026", "ambiguous"), ("1999", "no run")])
def test_show_an_unknown_run(history: Path, run_id: str, message: str) -> None:
    done = lmflow("runs", "show", run_id, cwd=history)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_show_a_damaged_log_exits_2(tmp_path: Path) -> None:
    events = '{"seq": 1, "type": "run_started"}\n{broken\n{"seq": 3, "type": "run_finished"}\n'
    make_run(tmp_path, "20260105-120000-eeeeee", events=events)
    done = lmflow("runs", "show", "last", "--events", cwd=tmp_path)
    assert done.returncode == 2
    assert "events.jsonl:2: the run log is damaged" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "result",
    [
        {"status": "failed", "steps": 5, "outputs": ["a", "b"]},
        {"status": ["odd"], "steps": [1, {"id": "x", "status": {"a": 1}}], "outputs": "text"},
    ],
)
def test_show_an_odd_result_file(tmp_path: Path, result: dict[str, Any]) -> None:
    make_run(tmp_path, "20260105-120000-eeeeee", result)
    done = lmflow("runs", "show", "last", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run 20260105-120000-eeeeee" in done.stdout and "outputs:" not in done.stdout
    assert lmflow("runs", "list", cwd=tmp_path).returncode == 0


def test_only_run_directories_count_newest_first(tmp_path: Path) -> None:
    older = make_run(tmp_path, "20260105-120000-ffffff", {"workflow": "first", "status": "failed"})
    newer = make_run(tmp_path, "20260105-120000-aaaaaa", {"workflow": "second", "status": "error"})
    # The same second: the directory written last is the newer run, whatever its name.
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    for name in ("zz-notes", "20261301-000000-abcdef", "99999999-999999-zzzzzz"):
        (tmp_path / ".lmflow" / "runs" / name).mkdir()
    (tmp_path / ".lmflow" / "runs" / "20270101-000000-abcdef").write_text("a file")

    done = lmflow("runs", "list", cwd=tmp_path)
    assert [line.split()[0] for line in done.stdout.splitlines()] == [newer.name, older.name]
    done = lmflow("runs", "show", "last", cwd=tmp_path)
    assert f"run {newer.name}: second" in done.stdout
    assert lmflow("runs", "show", "zz", cwd=tmp_path).returncode == 2


def test_the_workflow_of_a_run_without_result_comes_from_the_first_line(tmp_path: Path) -> None:
    """Only the first line is read: a log damaged further on still names its workflow."""
    events = '{"seq": 1, "type": "run_started", "workflow": "survey"}\n{broken\n{"seq": 3}\n'
    make_run(tmp_path, "20260105-120000-eeeeee", events=events)
    done = lmflow("runs", "list", cwd=tmp_path)
    assert "survey" in done.stdout and "no result.json" in done.stdout


ROOT = Path(__file__).resolve().parent.parent


def test_list_marks_a_replayed_run(history: Path) -> None:
    cassette = ROOT / "tests" / "cassettes" / "meeting-planner.yaml"
    workflow = ROOT / "workflows" / "meeting-planner.yaml"
    done = lmflow("run", str(workflow), "--replay", str(cassette), "-q", cwd=history)
    assert done.returncode == 0, done.stderr
    lines = lmflow("runs", "list", cwd=history).stdout.splitlines()
    assert lines[0].endswith(f"meeting-planner  [replay of {cassette}]"), lines[0]
    assert not any("[replay" in line for line in lines[1:])  # live runs are not marked
    rows = json.loads(lmflow("runs", "list", "--json", cwd=history).stdout)
    assert rows[0]["replayed_from"] == str(cassette)
    assert rows[1]["replayed_from"] is None
    shown = lmflow("runs", "show", "last", cwd=history).stdout
    assert f"replayed from: {cassette}" in shown


def test_prune_keeps_the_newest_runs_and_nothing_else_is_touched(history: Path) -> None:
    runs = history / ".lmflow" / "runs"
    (runs / "notes").mkdir()  # not a run: never removed
    done = lmflow("runs", "prune", "--keep", "2", cwd=history)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "removed 20260102-090000-bbbbbb",
        "removed 20260101-080000-aaaaaa",
    ]
    assert "2 run(s) removed, the newest 2 kept" in done.stderr
    assert sorted(p.name for p in runs.iterdir()) == [
        "20260103-100000-cccccc",
        "20260104-110000-dddddd",
        "notes",
    ]
    assert lmflow("runs", "prune", "--keep", "2", cwd=history).stdout == ""
    assert lmflow("runs", "prune", "--keep", "-1", cwd=history).returncode == 2
    assert lmflow("runs", "prune", cwd=history).returncode == 2  # --keep is required
