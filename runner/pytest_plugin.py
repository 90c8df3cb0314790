"""pytest fixtures that run a workflow from its cassette and snapshot the run with syrupy.

    def test_meeting_planner(lmflow_run, lmflow_snapshot):
        result = lmflow_run("workflows/meeting-planner.yaml", inputs={"time": "16:00"})
        assert result.status == "succeeded"
        assert result.outputs["everyone_fits"] is False
        assert result.steps["check"].output["everyone_fits"] is False
        assert result.snapshot_view() == lmflow_snapshot

`lmflow_run` replays `cassettes/<workflow file name>` next to the test file (here
`cassettes/meeting-planner.yaml`), or the `cassette=` given: no LM Studio and no MCP server
is needed. `pytest --lmflow-record` re-records those cassettes against LM Studio and the real
servers instead. `lmflow_snapshot` is syrupy's `snapshot` storing one readable YAML file per
test under `__snapshots__/<test file>/`; `--snapshot-update` writes them.

pytest loads this module for every project that has lmflow installed (the `pytest11` entry
point), so it imports nothing heavy, and syrupy only when it is installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .executor import StepRecord

try:
    from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
except ImportError:  # syrupy is optional: only `lmflow_snapshot` needs it
    SingleFileSnapshotExtension = None  # type: ignore[assignment,misc]

_RECORDED = pytest.StashKey[dict[Path, str]]()
"""The cassettes `--lmflow-record` wrote in this session, and the test that wrote each."""


@dataclass
class LmflowResult:
    """What a test sees of a run: how it ended, its outputs, steps and events."""

    status: str
    outputs: dict[str, Any]
    steps: dict[str, StepRecord]
    """Step id -> the run's record of it, read by attribute (`.output`, `.status`, ...)."""
    events: list[dict[str, Any]]
    run_dir: Path
    error: str | None = None
    placeholders: dict[str, str] = field(default_factory=dict)

    def snapshot_view(self) -> list[dict[str, Any]]:
        """The events without timings, ids and machine paths: equal for equal exchanges."""
        from .runlog import snapshot_view

        return snapshot_view(self.events, self.placeholders)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lmflow")
    group.addoption(
        "--lmflow-record",
        action="store_true",
        help="lmflow_run: re-record the cassettes against LM Studio (LMFLOW_BASE_URL or the "
        "workflow's base_url) and the real MCP servers, instead of replaying them.",
    )


@pytest.fixture
def lmflow_run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., LmflowResult]:
    """Run a workflow file from a cassette: `lmflow_run(path, inputs={...}, cassette=...)`.

    Relative paths are relative to the pytest root directory; the cassette defaults to
    `cassettes/<workflow file name>` next to the test file, so runs of one workflow with
    different inputs each need their own `cassette=`. `live_tools=True` starts the
    workflow's MCP servers instead of replaying the tool results. `answers={STEP: VALUE}`
    answers `ask:` steps as `--answer` does (a replay otherwise takes the cassette's). A
    request the cassette does not hold fails the test with the closest recorded request and
    what differs.
    """
    record = bool(request.config.getoption("lmflow_record"))
    root = request.config.rootpath

    def run(
        workflow: str | Path,
        *,
        inputs: Mapping[str, Any] | None = None,
        cassette: str | Path | None = None,
        live_tools: bool = False,
        answers: Mapping[str, Any] | None = None,
    ) -> LmflowResult:
        path = root / workflow
        tape = root / cassette if cassette else request.path.parent / "cassettes" / path.name
        if record:
            _claim(request, tape)
        return _run(
            path,
            dict(inputs or {}),
            tape,
            tmp_path,
            record=record,
            live=live_tools,
            answers=dict(answers or {}),
        )

    return run


def _claim(request: pytest.FixtureRequest, tape: Path) -> None:
    """One recording per cassette and session: a second would silently replace the first."""
    recorded = request.config.stash.setdefault(_RECORDED, {})
    key = tape.resolve()
    if key in recorded:
        pytest.fail(
            f"lmflow: cassette {tape} was already recorded in this session (by "
            f"{recorded[key]}); recording it again would replace that recording\n"
            "hint: give each run of the workflow its own cassette: "
            "lmflow_run(..., cassette='cassettes/<name>.yaml')",
            pytrace=False,
        )
    recorded[key] = request.node.nodeid


def _run(
    path: Path,
    inputs: dict[str, Any],
    tape: Path,
    tmp: Path,
    *,
    record: bool,
    live: bool,
    answers: dict[str, Any],
) -> LmflowResult:
    from .api import RunOptions, run_workflow_sync
    from .errors import LmflowError
    from .runlog import Event

    events: list[dict[str, Any]] = []

    def collect(event: Event) -> None:
        events.append(json.loads(json.dumps(event.as_dict(), default=str)))

    options = RunOptions(
        runs_dir=tmp / "runs",
        sinks=(collect,),
        record=tape if record else None,
        rerecord=record,
        replay=None if record else tape,
        live_tools=live and not record,
        answers=answers,
    )
    failure = None
    try:
        result = run_workflow_sync(path, inputs, options)
    except LmflowError as error:
        failure = f"lmflow: {error.message}" + (f"\nhint: {error.hint}" if error.hint else "")
    if failure is not None:  # outside the except: no chained traceback in the report
        pytest.fail(failure, pytrace=False)
    placeholders = {
        str(path.parent.resolve()): "<workflow.dir>",
        str(result.run_dir): "<run.dir>",  # absolute already (runtime.prepare)
        str(tmp.resolve()): "<tmp>",
        result.run_id: "<run.id>",
        result.started_at: "<run.started_at>",
    }
    assert result.run_dir is not None  # the plugin's runs always write their log
    return LmflowResult(
        status=result.status,
        outputs=dict(result.outputs),
        steps=dict(result.steps),
        events=events,
        run_dir=result.run_dir,
        error=result.error,
        placeholders=placeholders,
    )


if SingleFileSnapshotExtension is not None:

    class YamlSnapshotExtension(SingleFileSnapshotExtension):
        """One YAML file per snapshot: diffs in review read like the run itself."""

        file_extension = "yaml"
        _write_mode = WriteMode.TEXT

        def serialize(self, data: Any, **kwargs: Any) -> str:
            from .replay import to_yaml

            return to_yaml(data)

    @pytest.fixture
    def lmflow_snapshot(snapshot: Any) -> Any:
        """syrupy's `snapshot`, storing `__snapshots__/<test file>/<test>.yaml`."""
        return snapshot.use_extension(YamlSnapshotExtension)
