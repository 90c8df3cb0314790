"""The history of runs: `.lmflow/runs/<run-id>/` directories, read back for `lmflow runs`.

Reading is tolerant: a run that was killed has no result.json, a disk that filled up may
leave a broken one, a hand edit or another lmflow version an odd one; such a run is listed
with what is known and why the rest is not.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

RUNS_DIR = Path(".lmflow") / "runs"
_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


@dataclass(frozen=True)
class RunSummary:
    """One line of `lmflow runs list`."""

    run_id: str
    path: Path
    workflow: str | None
    status: str
    started: datetime | None
    duration: float | None
    result: dict[str, Any] | None
    problem: str | None = None
    replayed_from: str | None = None
    """The cassette a replayed run answered from."""


def started_at(run_id: str) -> datetime | None:
    """The UTC start time a run id begins with (runlog.new_run_id); None for another name."""
    if not _RUN_ID.fullmatch(run_id):
        return None
    try:
        return datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def summarize(run_dir: Path) -> RunSummary:
    """What result.json says, or what the first event says when there is no usable result."""
    result: dict[str, Any] | None = None
    problem = None
    try:
        loaded = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        result = _usable(loaded) if isinstance(loaded, dict) else None
        problem = None if result is not None else "result.json is not an object"
    except FileNotFoundError:
        problem = "no result.json: the run is still going, or was killed"
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, not JSON
        problem = f"result.json is unreadable ({error})"
    workflow = result.get("workflow") if result else None
    if workflow is None:
        workflow = _first_event(run_dir / "events.jsonl").get("workflow")
    duration = result.get("duration") if result else None
    return RunSummary(
        run_id=run_dir.name,
        path=run_dir,
        workflow=workflow if isinstance(workflow, str) else None,
        status=str(result.get("status", "unknown")) if result else "unknown",
        started=started_at(run_dir.name),
        duration=duration if isinstance(duration, (int, float)) else None,
        result=result,
        problem=problem,
        replayed_from=_text_or_none(result.get("replayed_from")) if result else None,
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _usable(result: dict[str, Any]) -> dict[str, Any]:
    """result.json with steps only as a list of objects and outputs only as an object, the
    shapes `lmflow runs show` prints."""
    steps = result.get("steps")
    outputs = result.get("outputs")
    return {
        **result,
        "steps": [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else [],
        "outputs": outputs if isinstance(outputs, dict) else {},
    }


def _first_event(path: Path) -> dict[str, Any]:
    """The `run_started` event: the first line only, however long the log."""
    try:
        with path.open(encoding="utf-8") as file:
            event = json.loads(file.readline())
    except (OSError, ValueError):  # no log, or a damaged one: it must not hide the run
        return {}
    return event if isinstance(event, dict) else {}


def run_dirs(runs_dir: Path) -> list[Path]:
    """The runs under `runs_dir`, newest first: by the start time in the id, then by the
    directory's modification time. A directory whose name is not a run id is not a run."""
    runs = []
    for path in runs_dir.iterdir() if runs_dir.is_dir() else ():
        started = started_at(path.name)
        if started is not None and path.is_dir():
            runs.append((started, _mtime(path), path.name, path))
    return [path for *_, path in sorted(runs, reverse=True)]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed while listing
        return 0.0


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run under `runs_dir`, newest first."""
    return [summarize(path) for path in run_dirs(runs_dir)]


def prune_runs(runs_dir: Path, keep: int) -> list[Path]:
    """Delete every run but the newest `keep`; the deleted directories, oldest last. Only run
    directories are touched (a name that is not a run id is left alone)."""
    doomed = run_dirs(runs_dir)[keep:]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def find_run(runs_dir: Path, run_id: str) -> Path:
    """A run by its id, a unique prefix of it, or `last` (the newest run)."""
    runs = run_dirs(runs_dir)
    if not runs:
        raise ConfigurationError(f"no runs under {runs_dir}", hint="run a workflow first")
    if run_id == "last":
        return runs[0]
    matches = [path for path in runs if path.name.startswith(run_id)]
    exact = [path for path in matches if path.name == run_id]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if matches:
        raise ConfigurationError(
            f"run id {run_id!r} is ambiguous",
            hint="matches: " + ", ".join(path.name for path in matches[:10]),
        )
    raise ConfigurationError(
        f"no run {run_id!r} under {runs_dir}",
        hint="`lmflow runs list` shows the run ids; `last` is the newest run",
    )
