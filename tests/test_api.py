"""The public Python API (runner/api.py, docs/api.md) and the package's import names."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmflow_runner
from lmflow_runner import RunOptions, StepResult, WorkflowResult
from lmflow_runner.errors import LmflowError, WorkflowInvalidError

ROOT = Path(__file__).resolve().parent.parent
PLANNER = ROOT / "workflows" / "meeting-planner.yaml"
CASSETTE = ROOT / "tests" / "cassettes" / "meeting-planner.yaml"


def test_run_workflow_sync_gives_a_typed_result_with_attributes_all_the_way(
    tmp_path: Path,
) -> None:
    result = lmflow_runner.run_workflow_sync(
        PLANNER, {}, RunOptions(replay=CASSETTE, runs_dir=tmp_path / "runs")
    )
    assert isinstance(result, WorkflowResult)
    assert result.status == "succeeded" and result.ok, result.error
    assert result.outputs["everyone_fits"] is False
    assert list(result.steps) == lmflow_runner.load_workflow(PLANNER).plan.order()
    step = result.steps["check"]
    assert isinstance(step, StepResult)
    assert step.status == "succeeded" and step.model and step.rounds >= 1
    assert result.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in result.steps.values())
    assert result.usage.prompt_tokens > 0
    assert result.run_dir == (tmp_path / "runs" / result.run_id).resolve()
    on_disk = json.loads((result.run_dir / "result.json").read_text())
    assert on_disk["run_id"] == result.run_id and on_disk["status"] == "succeeded"
    assert result.as_dict()["outputs"] == on_disk["outputs"]


def test_run_workflow_is_async_and_takes_a_loaded_workflow(tmp_path: Path) -> None:
    workflow = lmflow_runner.load_workflow(PLANNER)
    options = RunOptions(replay=CASSETTE, write_log=False, runs_dir=tmp_path / "runs")
    result = asyncio.run(lmflow_runner.run_workflow(workflow, None, options))
    assert result.status == "succeeded"
    assert result.run_dir is None  # no log written
    assert not (tmp_path / "runs").exists()
    assert result.steps["check"].output is not None


def test_load_workflow_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\nname: bad\nsteps:\n  - id: a\n    prompt: '{{ steps.nope.output }}'\n"
    )
    with pytest.raises(WorkflowInvalidError) as caught:
        lmflow_runner.load_workflow(str(path))
    assert caught.value.problems
    assert all(problem.line for problem in caught.value.problems)


def test_an_environment_that_is_not_ready_raises(tmp_path: Path) -> None:
    with pytest.raises(LmflowError):
        lmflow_runner.run_workflow_sync(
            PLANNER, {}, RunOptions(replay=tmp_path / "missing.yaml", runs_dir=tmp_path)
        )


def test_the_old_import_name_is_the_same_modules() -> None:
    import lmflow_runner.spec.load
    import runner
    import runner.errors
    import runner.spec.load

    assert runner is lmflow_runner
    assert runner.errors.LmflowError is LmflowError
    assert runner.spec.load is lmflow_runner.spec.load
    assert runner.spec.load.__spec__.name == "lmflow_runner.spec.load"


@pytest.mark.parametrize("name", ["runner", "lmflow_runner"])
def test_python_dash_m_runs_the_cli_under_either_name(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", name, "validate", "--offline", str(PLANNER)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_another_copy_of_the_code_on_pythonpath_stays_itself(tmp_path: Path) -> None:
    """A bench of older code (PYTHONPATH at another checkout) must run that code, not the
    installed lmflow_runner."""
    copy = tmp_path / "copy" / "runner"
    shutil.copytree(ROOT / "runner", copy, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-c", "import runner.cli; print(runner.cli.__file__)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(copy.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == str(copy / "cli.py"), done.stderr
