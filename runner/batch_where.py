"""Where a row of `lmflow batch` runs: in this process (`in_process`) or on a Dask worker
(runner/batch_dask.py). Either way one row is one `run_row` call, which runs the workflow
once through the public API with the MCP servers its process shares across rows."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .api import RunOptions, run_workflow
from .errors import LLMConnectionError, LmflowError
from .shared_servers import ServerPool
from .spec.model import Workflow


@dataclass(frozen=True)
class RowRun:
    """How a row's run ended, wherever it ran (plain data: a Dask worker sends it back)."""

    status: str
    """The run's status; `error` when the environment was not ready (see `error`)."""
    inputs: Mapping[str, Any]
    """The typed inputs (the raw ones when the run did not start)."""
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    run_id: str | None = None
    duration: float = 0.0
    usage: Mapping[str, int] | None = None
    worker: str | None = None
    """The Dask worker that ran it (None: this process)."""
    unreachable: bool = False
    """The row's LM Studio host could not be reached at all: the host leaves the rotation
    and the row runs again elsewhere."""


async def run_row(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    options: RunOptions,
    pool: ServerPool,
    worker: str | None = None,
) -> RowRun:
    """Run one row with the MCP servers `pool` keeps for this process (each row starts its
    own when the servers depend on the row: runner/shared_servers.py)."""
    try:
        # A replay answers tools from its cassette: no server is started for it.
        servers = None if options.replay is not None else await pool.servers_for(workflow)
        result = await run_workflow(workflow, inputs, dataclasses.replace(options, servers=servers))
    except LLMConnectionError as error:
        return RowRun("error", dict(inputs), error=error.message, worker=worker, unreachable=True)
    except LmflowError as error:
        return RowRun("error", dict(inputs), error=error.message, worker=worker)
    return RowRun(
        status=result.status,
        inputs=dict(result.inputs),
        outputs=dict(result.outputs),
        error=result.error,
        run_id=result.run_id,
        duration=round(result.duration, 3),
        usage=result.usage.as_dict(),
        worker=worker,
    )


class Rows(Protocol):
    """Runs rows somewhere; open for the whole batch."""

    async def run(self, inputs: Mapping[str, Any], options: RunOptions) -> RowRun: ...


Where = Callable[[Workflow], AbstractAsyncContextManager[Rows]]
"""Opens the place where a batch's rows run, for one workflow."""


class _InProcess:
    def __init__(self, workflow: Workflow, pool: ServerPool) -> None:
        self._workflow = workflow
        self._pool = pool

    async def run(self, inputs: Mapping[str, Any], options: RunOptions) -> RowRun:
        return await run_row(self._workflow, inputs, options, self._pool)


@contextlib.asynccontextmanager
async def in_process(workflow: Workflow) -> AsyncIterator[Rows]:
    """Rows run in this process and share its MCP servers, stopped when the batch ends."""
    async with ServerPool() as pool:
        yield _InProcess(workflow, pool)
