"""The `unordered-side-effects` warning from what the servers say about their tools.

Once the servers have listed their tools (`validate --servers`, a run's start), whether a
step may write through a server is known better than by names: the tools a step may call
are its toolbox (its allow-list applied), and each tool's MCP annotations (`readOnlyHint`,
`destructiveHint`) say whether it writes; a tool without them is judged by its name, as
offline (runner/spec/side_effects.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec.model import AgentStep, ToolStep, Workflow
from .spec.problems import Problem
from .spec.side_effects import RULE, shared_writers, writes

if TYPE_CHECKING:
    from mcp.types import Tool

    from .mcp import ToolSource


def shared_writer_warnings(workflow: Workflow, source: ToolSource) -> list[Problem]:
    """A warning for each pair of steps that may run at once and share a server one of them
    may write through, by the tools the servers listed."""
    steps = {step.index: step for step in workflow.steps}

    def servers_of(index: int) -> set[str]:
        step = steps.get(index)
        if isinstance(step, AgentStep):
            return set(step.mcp)
        return {step.tool_server} if isinstance(step, ToolStep) else set()

    found: list[Problem] = []
    for shared in shared_writers(
        workflow.plan, servers_of, lambda index: _writes(steps.get(index), source)
    ):
        at = workflow.source.position(("steps", shared.second.index))
        found.append(
            Problem(
                str(workflow.path), at.line, at.col, shared.message, RULE, shared.hint, "warning"
            )
        )
    return found


def _writes(step: object, source: ToolSource) -> dict[str, str]:
    """Server -> a tool of it the step may write through, and why: a destructive one first."""
    if isinstance(step, ToolStep):
        listed = [t for t in source.tools(step.tool_server) if t.name == step.tool_name]
        offered = [(step.tool_server, listed[0])] if listed else []
        fallback = {} if listed or not writes(step.tool_name) else {step.tool_server: step.tool}
    elif isinstance(step, AgentStep) and step.mcp:
        from .mcp import build_toolbox

        offered, fallback = build_toolbox(source, step.mcp, step.tools).offered(), {}
    else:
        return {}
    found: dict[str, str] = dict(fallback)
    for server, tool in sorted(offered, key=lambda item: not _destructive(item[1])):
        reason = _reason(tool)
        if reason is not None:
            found.setdefault(server, f"{tool.name}: {reason}" if reason else tool.name)
    return found


def _reason(tool: Tool) -> str | None:
    """Why the tool may write ('' when its name says so), or None when it may not."""
    hints = tool.annotations
    read_only = hints.read_only_hint if hints is not None else None
    destructive = hints.destructive_hint if hints is not None else None
    if not writes(tool.name, read_only, destructive):
        return None
    if destructive:
        return "destructiveHint"
    return "readOnlyHint false" if read_only is False else ""


def _destructive(tool: Tool) -> bool:
    return tool.annotations is not None and tool.annotations.destructive_hint is True
