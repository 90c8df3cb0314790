"""The process trees lmflow starts, and how they end.

Each MCP server starts as the leader of a new session (and so of a new process group).
Whatever it starts stays in that group and session unless it leaves them on purpose, so
"the server's processes" are the members of its group and session: `stop_tree` signals
all of them, whether or not the leader is still alive. A descendant that starts a session
of its own (`setsid`) leaves both and is out of reach; docs/running.md says so.

`kill_all` is for the second Ctrl-C: it kills every tree still registered at once, from a
signal handler, without waiting for anything.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import anyio
from anyio.abc import Process

from .spec.model import StdioServer

_PROC = Path("/proc")
_POLL_INTERVAL = 0.01
_KILL_TIMEOUT = 1.0
"""Seconds for SIGKILLed processes to die; only an unkillable one (stuck in I/O) runs it out."""

_live: set[int] = set()
"""Leaders (group and session ids) of the trees started and not yet stopped."""


INHERITED_VARIABLES = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
"""The only variables of lmflow's environment a server or command inherits; the rest of what
it sees is its own `env:`. A CI job's secrets stay out of processes that did not ask for them."""


async def spawn_server(server: StdioServer) -> Process:
    """Start a stdio server as the leader of a new session, with pipes for its stdio.

    Light on purpose (no MCP SDK): a run spawns its servers before it imports the SDK and
    checks its models, so the servers boot meanwhile.
    """
    return await spawn([server.command, *server.args], server.env, server.cwd)


async def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None, *, stdin: int | None = None
) -> Process:
    """Start `argv` as the leader of a new session, registered until `stop_tree`, with
    `env` on top of the few inherited variables. `stdin` None is a pipe."""
    if cwd is not None and not Path(cwd).is_dir():
        raise NotADirectoryError(errno.ENOENT, "working directory not found", cwd)
    inherited = {
        name: value
        for name in INHERITED_VARIABLES
        if (value := os.environ.get(name)) is not None and not value.startswith("()")
    }
    # Shielded: a cancellation that arrives once the child exists but before it is
    # registered would leave it running with nobody to stop it. The cancellation is not
    # lost: it reaches the caller at its next await, with the child in hand.
    with anyio.CancelScope(shield=True):
        process = await anyio.open_process(
            list(argv),
            env=inherited | dict(env),
            cwd=cwd,
            start_new_session=True,
            stdin=stdin if stdin is not None else subprocess.PIPE,
        )
    _live.add(process.pid)
    return process


def kill_all() -> None:
    """SIGKILL every registered tree now."""
    for leader in list(_live):
        signal_tree(leader, signal.SIGKILL)


def members(leader: int) -> list[int]:
    """The live processes of `leader`'s process group and session (Linux reads /proc; other
    systems see only whether the group has a member left, reported as the leader's id)."""
    if not _PROC.is_dir():
        try:
            os.killpg(leader, 0)
        except OSError:
            return []
        return [leader]
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After the ")" that ends the command name: state, ppid, pgrp, session.
            state, _, group, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # it ended while we looked
        if state != "Z" and leader in (int(group), int(session)):
            found.append(int(entry.name))
    return found


def signal_tree(leader: int, signum: int) -> None:
    """Send `signum` to `leader`'s process group and to every other member of its session."""
    targets = set(members(leader)) if sys.platform == "linux" else set()
    with suppress(OSError):  # the group is empty (or gone)
        os.killpg(leader, signum)
    for pid in targets:
        with suppress(OSError):
            os.kill(pid, signum)


async def stop_tree(leader: int, grace: float) -> None:
    """SIGTERM the whole tree, SIGKILL what is left after `grace` seconds, and wait (boundedly)
    until it is gone; then forget it. A tree already stopped (forgotten) is left alone: the
    run's early spawns are stopped again on the way out, in case nothing took them over."""
    if leader not in _live:
        return
    try:
        if members(leader):
            signal_tree(leader, signal.SIGTERM)
            if not await _gone(leader, grace):
                signal_tree(leader, signal.SIGKILL)
                await _gone(leader, _KILL_TIMEOUT)
    finally:
        _live.discard(leader)


async def _gone(leader: int, within: float) -> bool:
    with anyio.move_on_after(within):
        while members(leader):
            await anyio.sleep(_POLL_INTERVAL)
        return True
    return False
