"""The history of runs: `.lmflow/runs/<run-id>/` directories, read back for `lmflow runs`.

Reading is tolerant: a run that was killed has no result.json, a disk that filled up may
leave a broken one; such a run is listed with what is known and why the rest is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .runlog import read_events


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


def started_at(run_id: str) -> datetime | None:
    """Run ids begin with their UTC start time (runlog.new_run_id)."""
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
        result = loaded if isinstance(loaded, dict) else None
        problem = None if result is not None else "result.json is not an object"
    except FileNotFoundError:
        problem = "no result.json: the run is still going, or was killed"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"result.json is unreadable ({error})"
    workflow = result.get("workflow") if result else None
    if workflow is None and (run_dir / "events.jsonl").is_file():
        first = next(iter(_events_or_none(run_dir)), {})
        workflow = first.get("workflow")
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
    )


def _events_or_none(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return read_events(run_dir / "events.jsonl").events
    except Exception:  # a damaged log must not hide the run from the list
        return []


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run under `runs_dir`, newest first."""
    if not runs_dir.is_dir():
        return []
    dirs = [d for d in runs_dir.iterdir() if d.is_dir()]
    return [summarize(d) for d in sorted(dirs, key=lambda d: d.name, reverse=True)]


def find_run(runs_dir: Path, run_id: str) -> Path:
    """A run by its id, a unique prefix of it, or `last`."""
    runs = sorted(
        (d.name for d in runs_dir.iterdir() if d.is_dir()) if runs_dir.is_dir() else (),
        reverse=True,
    )
    if not runs:
        raise ConfigurationError(f"no runs under {runs_dir}", hint="run a workflow first")
    if run_id == "last":
        return runs_dir / runs[0]
    if run_id in runs:
        return runs_dir / run_id
    matches = [name for name in runs if name.startswith(run_id)]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if matches:
        raise ConfigurationError(
            f"run id {run_id!r} is ambiguous", hint="matches: " + ", ".join(matches[:10])
        )
    raise ConfigurationError(
        f"no run {run_id!r} under {runs_dir}",
        hint="`lmflow runs list` shows the run ids; `last` is the newest run",
    )
