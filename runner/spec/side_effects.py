"""Steps that may run at the same time and share a server one of them may write through.

If one relies on the other's change, only `needs:` orders them: the `unordered-side-effects`
warning says so. Whether a tool writes is what its MCP annotations say (`readOnlyHint`,
`destructiveHint`) when the tool lists are known (`validate --servers`, a run's start), and
what its name says otherwise (`write_file`, `createEntities`). The pairs and the wording are
here, once, for the offline validator and the checks against live servers alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .plan import Plan, StepPlan

RULE = "unordered-side-effects"
WRITING_VERBS = frozenset(
    {"write", "create", "delete", "remove", "move", "rename", "edit", "update", "set", "add"}
    | {"insert", "put", "store", "save", "append", "patch", "commit", "push"}
)


def name_says_writing(tool: str) -> bool:
    """Whether a tool's name says it changes something (`write_file`, `createEntities`)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", tool).lower()
    return any(word in WRITING_VERBS for word in re.split(r"[^a-z0-9]+", words))


def writes(tool: str, read_only: bool | None = None, destructive: bool | None = None) -> bool:
    """Whether a tool may change something: its annotations when it has them (read-only,
    or not; destructive), its name otherwise."""
    if read_only is not None:
        return not read_only
    if destructive:
        return True
    return name_says_writing(tool)


@dataclass(frozen=True)
class SharedWriter:
    """Two unordered steps (`first` earlier in the file), a server both use, and the step
    that may write through it with one such tool."""

    first: StepPlan
    second: StepPlan
    server: str
    writer: StepPlan
    tool: str

    @property
    def message(self) -> str:
        return (
            f"steps {self.first.id!r} and {self.second.id!r} may run at the same time and both "
            f"use server {self.server!r}; {self.writer.id!r} may write through it ({self.tool})"
        )

    @property
    def hint(self) -> str:
        a, b = self.first.id, self.second.id
        return (
            f"if {b!r} relies on what {a!r} does (or the other way round), add "
            f"`needs: [{a}]` to {b!r}; if the server must not be called concurrently, set "
            "`max_concurrent_calls: 1` on it"
        )


def shared_writers(
    plan: Plan,
    servers_of: Callable[[int], set[str]],
    writes_of: Callable[[int], Mapping[str, str]],
) -> Iterator[SharedWriter]:
    """Each pair of steps that may run at once, with each server they share that one of them
    may write through. `servers_of(i)` are step i's servers; `writes_of(i)` maps a server
    to a tool of it step i may write through."""
    writes_by_step = {step.index: writes_of(step.index) for step in plan.steps}
    if not any(writes_by_step.values()):
        return
    for a, b in plan.unordered_pairs():
        if a.id is None or b.id is None:
            continue
        for server in sorted(servers_of(a.index) & servers_of(b.index)):
            writer = next((s for s in (a, b) if server in writes_by_step[s.index]), None)
            if writer is not None:
                yield SharedWriter(a, b, server, writer, writes_by_step[writer.index][server])
