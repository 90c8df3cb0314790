"""The public Python API: load a workflow, run it, read the result (docs/api.md).

`lmflow run`, the pytest plugin and any script go through these few names; the engine
behind them (runtime, executor, agent) may change without breaking a caller.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import spec
from .chat import Usage
from .executor import RunResult, coerce_inputs
from .executor import StepRecord as StepResult
from .runtime import PreparedRun, RunOptions, begin, execute, parts_for
from .runtime import one_off_workflow as agent_workflow
from .shared_servers import SharedServers, open_servers
from .spec.model import Workflow

if TYPE_CHECKING:
    from .catalog import Catalog, ModelInfo
    from .spec.model import LMStudioSettings

__all__ = [
    "RunOptions",
    "SharedServers",
    "StepResult",
    "WorkflowResult",
    "agent_workflow",
    "check_inputs",
    "list_models",
    "load_workflow",
    "models_used",
    "open_servers",
    "run_workflow",
    "run_workflow_sync",
]


@dataclass(frozen=True)
class WorkflowResult:
    """How a run ended, with attributes all the way down: `result.steps["x"].output`."""

    run_id: str
    run_dir: Path | None
    """Where events.jsonl and result.json are (None when the run wrote no log)."""
    started_at: str
    """ISO 8601 UTC, to the second: the `run.started_at` templates saw."""
    workflow: str
    status: str
    """`succeeded`, `failed` (a step failed), `interrupted` or `error` (docs/runlog.md)."""
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    steps: Mapping[str, StepResult]
    """By step id, in run order."""
    error: str | None
    duration: float
    usage: Usage
    _result: RunResult = field(repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of result.json and `lmflow run --json`."""
        return self._result.as_dict()

    @classmethod
    def of(cls, run: PreparedRun, result: RunResult) -> WorkflowResult:
        return cls(
            run_id=result.run_id,
            run_dir=run.run_dir if run.writer is not None else None,
            started_at=str(run.context["run"]["started_at"]),
            workflow=result.workflow,
            status=result.status,
            inputs=MappingProxyType(dict(result.inputs)),
            outputs=MappingProxyType(dict(result.outputs)),
            steps=MappingProxyType({step.id: step for step in result.steps}),
            error=result.error,
            duration=result.duration,
            usage=result.usage,
            _result=result,
        )


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file; an invalid one raises `WorkflowInvalidError` with
    every problem and its file:line:col (`error.problems`)."""
    return spec.load_workflow(Path(path))


def check_inputs(workflow: Workflow, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The typed inputs a run would get, without running: raw values converted as `-i`
    values are. A bad one raises `InputError` (exit 2) naming every problem, so a caller
    with many input sets (`lmflow batch`) can check them all before any runs."""
    return coerce_inputs(workflow, inputs)


async def run_workflow(
    workflow: Workflow | str | os.PathLike[str],
    inputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
) -> WorkflowResult:
    """Run a workflow (or the file at that path) once. A failed step is a result
    (`status == "failed"`); an environment that is not ready raises an `LmflowError`."""
    if not isinstance(workflow, Workflow):
        workflow = load_workflow(workflow)
    options = options or RunOptions()
    run, reuse = begin(workflow, inputs or {}, options)
    result = await execute(run, parts_for(run, options), reuse)
    return WorkflowResult.of(run, result)


def run_workflow_sync(
    workflow: Workflow | str | os.PathLike[str],
    inputs: Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
) -> WorkflowResult:
    """`run_workflow` for code without an event loop of its own."""
    return asyncio.run(run_workflow(workflow, inputs, options))


async def list_models(
    base_url: str | None = None,
    *,
    refresh: bool = False,
    settings: LMStudioSettings | None = None,
) -> Catalog:
    """What the LM Studio server has, loaded or not, with tool-use capability (the model list
    `lmflow models` prints; cached like it). `settings` (a workflow's `lmstudio:`) names the
    token and, without `base_url`, the server, under the same trust rule as a run."""
    from .catalog import model_cache_ttl
    from .lmstudio_server import resolve_server
    from .preflight import fetch_catalog

    server = resolve_server(base_url, settings)
    return await fetch_catalog(server, ttl=model_cache_ttl(None), refresh=refresh)


def models_used(workflow: Workflow, catalog: Catalog) -> list[ModelInfo]:
    """The models of `catalog` a run of `workflow` would ask first (of a fallback list, the
    first the server has); a model the server lacks is left out."""
    from .preflight import models_to_run

    return models_to_run(workflow, catalog.models)
