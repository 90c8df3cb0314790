"""`lmflow batch --dask ADDRESS`: the rows run on the workers of a Dask distributed cluster.

The coordinator (the `lmflow batch` process) keeps OUT, the journal and the hosts: a row
takes a host slot, is submitted as one task, and its result comes back as a `RowRun`. Each
worker process runs its rows with `batch_where.run_row`, in an event loop of its own
(a thread), sharing one set of MCP servers per workflow; a worker plugin starts that loop
and stops it, with the servers, when the worker closes.

The workflow reaches the workers by path and content: every worker must see the workflow
file at the same absolute path (a shared or copied checkout), and a row refuses to run
where the file's sha256 differs from the coordinator's. When a worker is lost, the
scheduler runs its rows again on another worker; the coordinator writes each row once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from distributed import Client, WorkerPlugin, get_worker
from distributed.scheduler import KilledWorker

from .api import RunOptions
from .batch_rows import file_digest
from .batch_where import RowRun, Rows, run_row
from .errors import EnvironmentNotReadyError, LmflowError
from .shared_servers import ServerPool
from .spec import load_workflow
from .spec.model import Workflow

if TYPE_CHECKING:
    from distributed import Worker

PLUGIN_NAME = "lmflow-batch-rows"
CONNECT_TIMEOUT = "10s"
"""How long the coordinator waits for the scheduler before giving up (exit 3)."""


class SchedulerUnreachable(EnvironmentNotReadyError):
    """`--dask ADDRESS` names no scheduler that answers."""


@contextlib.asynccontextmanager
async def on_dask(address: str, workflow: Workflow) -> AsyncIterator[Rows]:
    """Rows submitted to the cluster whose scheduler is at `address`."""
    try:
        client = await Client(address, asynchronous=True, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise SchedulerUnreachable(
            f"cannot reach the Dask scheduler at {address} ({error})",
            hint="start it with `dask scheduler` and workers with `dask worker ADDRESS`, "
            "or check the address (docs/batch.md#dask)",
        ) from None
    try:
        await client.register_plugin(RowWorker(), name=PLUGIN_NAME)
        yield _DaskRows(client, workflow)
    finally:
        # Also on Ctrl-C: the scheduler forgets this batch's tasks that have not started.
        with anyio.CancelScope(shield=True):
            await client.close()


class _DaskRows:
    def __init__(self, client: Client, workflow: Workflow) -> None:
        self._client = client
        self._path = str(workflow.path.resolve())
        self._digest = file_digest(workflow.path)

    async def run(self, inputs: Mapping[str, Any], options: RunOptions) -> RowRun:
        # Where the row's run log goes, the same for every worker (the workflow's path is).
        options = replace(options, runs_dir=options.runs_dir.resolve())
        future = self._client.submit(
            run_on_worker, self._path, self._digest, dict(inputs), options, pure=False
        )
        try:
            return await future
        except KilledWorker as error:
            # The scheduler gave up after the row's workers died again and again.
            return RowRun(
                "error", dict(inputs), error=f"every Dask worker that ran it died: {error}"
            )


def run_on_worker(path: str, digest: str, inputs: dict[str, Any], options: RunOptions) -> RowRun:
    """The task of one row, run in a worker's thread."""
    worker = get_worker()
    rows = worker.plugins[PLUGIN_NAME]
    assert isinstance(rows, RowWorker)
    return rows.run(path, digest, inputs, options, worker.address)


class RowWorker(WorkerPlugin):
    """A worker's event loop for rows and the MCP servers its rows share, kept from the
    first batch to the worker's end (`idempotent`: a later batch finds them running)."""

    idempotent = True

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None
        self._pool: ServerPool | None = None
        self._workflows: dict[tuple[str, str], Workflow] = {}

    def setup(self, worker: Worker) -> None:
        self._portal = self._stack.enter_context(start_blocking_portal())
        self._pool = self._stack.enter_context(
            self._portal.wrap_async_context_manager(ServerPool())
        )

    def teardown(self, worker: Worker) -> None:
        self._stack.close()

    def run(
        self,
        path: str,
        digest: str,
        inputs: Mapping[str, Any],
        options: RunOptions,
        address: str,
    ) -> RowRun:
        assert self._portal is not None and self._pool is not None
        try:
            workflow = self._workflow(path, digest, address)
        except LmflowError as error:
            return RowRun("error", dict(inputs), error=error.message, worker=address)
        return self._portal.call(run_row, workflow, inputs, options, self._pool, address)

    def _workflow(self, path: str, digest: str, address: str) -> Workflow:
        """The coordinator's workflow, read here from the same path, once per content."""
        key = (path, digest)
        if key not in self._workflows:
            hint = "every worker needs the workflow's directory at the same path, unchanged"
            try:
                here = file_digest(Path(path))
            except OSError as error:
                raise WorkflowNotOnWorker(
                    f"worker {address} cannot read {path}: {error.strerror}", hint=hint
                ) from None
            if here != digest:
                raise WorkflowNotOnWorker(
                    f"{path} on worker {address} differs from the coordinator's", hint=hint
                )
            self._workflows[key] = load_workflow(Path(path))
        return self._workflows[key]


class WorkflowNotOnWorker(EnvironmentNotReadyError):
    """A worker cannot read the coordinator's workflow at the same path, or reads another."""
