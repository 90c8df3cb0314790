"""Limits on concurrent work: per-server limits on tool calls (`max_concurrent_calls`),
and `holding`, how the engine takes a slot of any limiter.

Concurrent steps may call the same MCP server at once; a server that cannot take that
(one SQLite connection, a stateful browser) says `max_concurrent_calls: 1`. The limit
wraps whatever tool source a run has (live sessions, a recorder, a replayer), so agent
steps and tool steps, live runs and replays all respect it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import anyio

from .chat import ToolResult
from .spec.model import Workflow
from .toolboxes import ToolboxFromSource

if TYPE_CHECKING:
    from mcp.types import Tool

    from .executor import ToolProvider
    from .mcp import ToolSource


@contextlib.asynccontextmanager
async def holding(limiter: anyio.CapacityLimiter) -> AsyncIterator[None]:
    """A slot of `limiter` for the enclosed work. A free slot is taken at once: `async with
    limiter` always passes through the event loop first, once per step or call, which is a
    measurable part of a run of many short steps."""
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        await limiter.acquire()
    try:
        yield
    finally:
        limiter.release()


class LimitedTools(ToolboxFromSource):
    """A tool source whose calls to some servers wait for a free slot."""

    def __init__(self, source: ToolSource, limits: Mapping[str, int]) -> None:
        self._source = source
        self._limiters = {name: anyio.CapacityLimiter(n) for name, n in limits.items()}

    def tools(self, server: str) -> list[Tool]:
        return self._source.tools(server)

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        limiter = self._limiters.get(server)
        if limiter is None:
            return await self._source.call_tool(server, tool, arguments)
        async with holding(limiter):
            return await self._source.call_tool(server, tool, arguments)


def limit_calls(workflow: Workflow, tools: ToolProvider) -> ToolProvider:
    """`tools` with the workflow's `max_concurrent_calls` applied (as is when none is set).
    Every tool provider of a run is also a tool source (it lists each server's tools)."""
    limits = call_limits(workflow)
    if not limits:
        return tools
    return LimitedTools(cast("ToolSource", tools), limits)


def call_limits(workflow: Workflow) -> dict[str, int]:
    """Each server's `max_concurrent_calls`, where one is set."""
    return {
        name: server.max_concurrent_calls
        for member in workflow.family()  # and the servers of the workflows it includes
        for name, server in member.mcp_servers.items()
        if server.max_concurrent_calls is not None
    }
