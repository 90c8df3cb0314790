"""One stdio MCP server process: the transport `mcp.Client` talks through.

Our own rather than the SDK's `stdio_client`, for promises the SDK cannot keep for us:
the server's stderr reaches its log file already masked, line by line as it is written (a
run killed outright leaves no raw secret behind); stopping takes well under a second
(close stdin, a short grace, SIGTERM, SIGKILL); everything the server started in its
process group or session goes with it, also when the server itself exited cleanly; a
large message costs time in proportion to its size (`LineSplitter`); and the process may
have been spawned earlier (`processes.spawn_server`), so its boot overlaps lmflow's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TextIO

import anyio
from anyio.abc import ByteReceiveStream, ObjectReceiveStream, ObjectSendStream, Process
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter

from . import processes
from .spec.model import StdioServer

STDIN_GRACE = 0.3
"""Seconds a server has to exit on its own once its stdin is closed (the MCP way to stop)."""
TERM_GRACE = 0.2
"""Seconds between SIGTERM and SIGKILL to what is left of its process group and session."""
_REAP_TIMEOUT = 1.0
_DRAIN_TIMEOUT = 0.2
_POLL_INTERVAL = 0.01
_MAX_LOG_LINE = 1 << 20


@asynccontextmanager
async def stdio_transport(
    server: StdioServer,
    stderr_log: Path,
    redact: Callable[[str], str],
    started: Process | None = None,
) -> AsyncIterator[TransportStreams]:
    """Talk to `server` through the process `started` for it (spawned now when None); stop
    its whole tree on the way out."""
    with stderr_log.open("a", encoding="utf-8", buffering=1) as log:
        process = started or await processes.spawn_server(server)
        to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)
        stderr_done = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_copy_stderr, process, log, redact, stderr_done)
            tasks.start_soon(_read_messages, process, to_session)
            tasks.start_soon(_write_messages, process, from_session, to_session)
            try:
                yield from_server, to_server
            finally:
                with anyio.CancelScope(shield=True):
                    from_server.close()
                    to_server.close()
                    await _stop(process)
                    with anyio.move_on_after(_DRAIN_TIMEOUT):
                        await stderr_done.wait()
                tasks.cancel_scope.cancel()


async def _stop(process: Process) -> None:
    """Close stdin, give the server `STDIN_GRACE` to exit, then end its whole tree."""
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        assert process.stdin is not None
        await process.stdin.aclose()
    await _exited(process, STDIN_GRACE)
    await processes.stop_tree(process.pid, TERM_GRACE)
    # Not process.wait(): it also waits for the pipes, which an escaped descendant may hold.
    await _exited(process, _REAP_TIMEOUT)


async def _exited(process: Process, timeout: float) -> None:
    with anyio.move_on_after(timeout):
        while process.returncode is None:
            await anyio.sleep(_POLL_INTERVAL)


async def _read_messages(
    process: Process, to_session: ObjectSendStream[SessionMessage | Exception]
) -> None:
    """Server stdout -> session, one JSON-RPC message per line, parsed from its bytes (MCP's
    stdio is UTF-8; a decoded copy of a large result would double its memory). Once the
    session is gone the rest is read and dropped, so a server blocked on a full pipe can
    still exit."""
    assert process.stdout is not None
    delivering = True
    async with to_session:
        async for line in _lines(process.stdout):
            if not delivering or not line.strip():
                continue
            try:
                message: SessionMessage | Exception = SessionMessage(
                    jsonrpc_message_adapter.validate_json(line, by_name=False)
                )
            except ValueError as error:
                message = error
            try:
                await to_session.send(message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                delivering = False


async def _write_messages(
    process: Process,
    from_session: ObjectReceiveStream[SessionMessage],
    to_session: ObjectSendStream[SessionMessage | Exception],
) -> None:
    """Session -> server stdin. A pipe that breaks ends the session's view of the server."""
    assert process.stdin is not None
    try:
        async with from_session:
            async for item in from_session:
                data = item.message.model_dump_json(by_alias=True, exclude_unset=True)
                await process.stdin.send((data + "\n").encode())
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await to_session.aclose()


async def _copy_stderr(
    process: Process, log: TextIO, redact: Callable[[str], str], done: anyio.Event
) -> None:
    """Server stderr -> its log file, each line masked before it is written. A line longer
    than `_MAX_LOG_LINE` bytes is written in pieces: a log needs no unbounded buffer."""
    assert process.stderr is not None
    try:
        async for line in _lines(process.stderr, max_line=_MAX_LOG_LINE):
            log.write(redact(line.decode("utf-8", errors="replace") + "\n"))
    finally:
        done.set()


class LineSplitter:
    """Bytes in, whole lines out, each byte copied a bounded number of times.

    The SDK's reader (mcp 2.3) joins its partial line to every chunk it reads and splits the
    whole again: a message of n bytes cost about n^2 / 64 KB copies (a 20 MB tool result
    took 13 s, a 50 MB one two minutes). Here the pieces of a partial line wait in a list
    and are joined once, at the newline.
    """

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.pending = 0
        """Bytes of the partial line held so far."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines that `chunk` completes, without their newline."""
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            self._pieces.append(chunk)
            self.pending += len(chunk)
            return []
        lines[0] = b"".join([*self._pieces, lines[0]])
        rest = lines.pop()
        self._pieces = [rest] if rest else []
        self.pending = len(rest)
        return lines

    def rest(self) -> bytes:
        """The partial line so far, handed out and forgotten."""
        rest = b"".join(self._pieces)
        self._pieces, self.pending = [], 0
        return rest


async def _lines(stream: ByteReceiveStream, *, max_line: int | None = None) -> AsyncIterator[bytes]:
    """Lines without their newline; the last one may have had none. With `max_line`, a
    partial line longer than that comes out in pieces."""
    lines = LineSplitter()
    with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        async for chunk in stream:
            for line in lines.feed(chunk):
                yield line
            if max_line is not None and lines.pending > max_line:
                yield lines.rest()
    rest = lines.rest()
    if rest:
        yield rest
