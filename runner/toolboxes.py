"""The toolbox of a tool source that stands in for live MCP sessions.

A recorder, a replayer and the per-server call limiter are tool sources: each lists a
server's tools and calls them. Their toolboxes are built exactly as the live sessions'
are, so a step sees the same tool names and the same allow-list errors whatever source it
has. The MCP SDK is imported only when a toolbox is built, keeping the modules that use
this light to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mcp import McpToolbox, ToolSource
    from .spec.model import AllowList


class ToolboxFromSource:
    """Mixin: `toolbox()` for a class that is a `ToolSource`."""

    def toolbox(
        self: ToolSource,
        servers: Sequence[str],
        allow: AllowList,
        limits: Mapping[str, int] | None = None,
    ) -> McpToolbox:
        from .mcp import build_toolbox

        return build_toolbox(self, servers, allow, limits)
