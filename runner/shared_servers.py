"""MCP servers started once and shared by many runs of one workflow (`api.open_servers`).

A run normally starts the servers its steps use and stops them when it ends. Many runs of
the same workflow (`lmflow batch`, a service) can share one set instead: `open_servers`
starts them, `RunOptions(servers=...)` hands them to each run, and their
`max_concurrent_calls` limits hold across all the runs that share them.

Servers cannot be shared when a run would start different ones: settings that read the
run's inputs or the run itself (`{{ inputs.x }}`, `{{ run.dir }}`), a server that may
sample (it is answered by the run's own model and LM Studio host), one that logs in with
OAuth (a run masks the tokens it reads itself), or a workflow with sub-workflows.
`unshareable` tells why, from the workflow's plan; such runs start their own servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .errors import ConfigurationError
from .executor import base_context, render_servers, servers_in_use
from .limits import LimitedTools, call_limits
from .runlog import Redactor, SecretEnv
from .spec.model import McpServer, Workflow

PER_RUN_ROOTS = ("inputs", "run")
"""What a server's settings may not read to be shared: these differ from run to run."""


def unshareable(workflow: Workflow) -> list[str]:
    """Why the servers the steps use must start per run (empty: they can be shared)."""
    used = servers_in_use(workflow)
    reasons = [
        f"{'.'.join(map(str, field.path[:2]))} reads {ref.root}.{'.'.join(map(str, ref.path))}"
        for field in workflow.plan.server_fields
        if field.path[1] in used
        for ref in field.refs
        if ref.root in PER_RUN_ROOTS
    ]
    reasons += [
        f"mcp_servers.{name} may sample (the run's own model answers it)"
        for name in used
        if workflow.mcp_servers[name].sampling is not None
    ]
    reasons += [
        f"mcp_servers.{name} logs in with OAuth (each run masks the tokens it sees)"
        for name in used
        if getattr(workflow.mcp_servers[name], "oauth", None) is not None
    ]
    reasons += [
        f"it runs {member.path.name} as a sub-workflow, whose servers start with each run"
        for member in workflow.family()
        if member is not workflow
    ]
    return list(dict.fromkeys(reasons))


@dataclass(frozen=True)
class SharedServers:
    """Started MCP servers for the runs of one workflow: `RunOptions(servers=...)`."""

    servers: Mapping[str, McpServer]
    """The declared settings they were started from (not rendered)."""
    tools: LimitedTools
    """The sessions with the servers' `max_concurrent_calls` applied across runs."""

    def check_for(self, workflow: Workflow) -> None:
        """Refuse a run of a workflow whose servers are not these."""
        wanted = {name: workflow.mcp_servers[name] for name in servers_in_use(workflow)}
        if wanted != dict(self.servers):
            raise ConfigurationError(
                f"the MCP servers handed to this run were opened for another workflow "
                f"({', '.join(self.servers) or 'none'}), not for {workflow.path}",
                hint="open them with open_servers(workflow) for the workflow you run",
            )


@contextlib.asynccontextmanager
async def open_servers(workflow: Workflow) -> AsyncIterator[SharedServers]:
    """Start the MCP servers the workflow's steps use, once, for many runs; they are stopped
    when the block ends, however it ends. Servers that depend on the run raise
    `ConfigurationError` (see `unshareable`); one that will not start, `MCPServerError`."""
    from .mcp import McpSessions

    reasons = unshareable(workflow)
    if reasons:
        raise ConfigurationError(
            f"the MCP servers of {workflow.path} cannot be shared by runs: {'; '.join(reasons)}",
            hint="run without shared servers: each run starts its own",
        )
    names = servers_in_use(workflow)
    redactor = Redactor()
    env = SecretEnv(sorted(workflow.plan.env_names), redactor)
    context = base_context(workflow, {}, env, run_id="", run_dir=None, started_at="")
    rendered = render_servers(workflow, names, context)
    async with McpSessions(
        rendered, redact=redactor.text, workflow_dir=workflow.path.resolve().parent
    ) as sessions:
        declared = {name: workflow.mcp_servers[name] for name in names}
        yield SharedServers(declared, LimitedTools(sessions, call_limits(workflow)))


class ServerPool:
    """Shared servers kept for as long as the pool is open, started when a workflow's first
    run asks for them (`lmflow batch` keeps one per process: the coordinator, each Dask
    worker). `async with ServerPool() as pool: servers = await pool.servers_for(wf)`.

    Each set of servers lives in a task of the pool's own, since the task that asked first
    may end long before the servers should."""

    def __init__(self) -> None:
        self._kept: dict[str, SharedServers] = {}
        self._lock = anyio.Lock()
        self._closing = anyio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> ServerPool:
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(self._closing.set)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def servers_for(self, workflow: Workflow) -> SharedServers | None:
        """The workflow's shared servers, started on first use; None when its steps use no
        server or its servers must start per run. A server that will not start raises
        `MCPServerError` (and is tried again by the next run)."""
        if not servers_in_use(workflow) or unshareable(workflow):
            return None
        key = f"{workflow.path.resolve()}\0{workflow.mcp_servers!r}"
        async with self._lock:
            if key not in self._kept:
                assert self._group is not None, "use the pool in `async with`"
                self._kept[key] = await self._group.start(self._keep, workflow)
            return self._kept[key]

    async def _keep(self, workflow: Workflow, *, task_status: TaskStatus[SharedServers]) -> None:
        async with open_servers(workflow) as shared:
            task_status.started(shared)
            await self._closing.wait()
