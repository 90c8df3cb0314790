"""The stdio transport to an MCP server: the SDK's, with a line reader that stays linear.

The SDK's `stdio_client` (mcp 2.3) joins its partial line to every 64 KB chunk it reads and
splits the whole again, so one message of n bytes costs about n^2 / 128 KB character copies:
a 20 MB tool result took 13 s, a 50 MB one two minutes. `stdio_transport` is a drop-in for
`stdio_client` that keeps the pieces of a partial line in a list and joins them once, at
the newline. Starting and stopping the server (its own session, the kill of its whole
process tree) are the SDK's own functions, so the process handling stays the SDK's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import anyio
import anyio.lowlevel
from mcp import StdioServerParameters
from mcp.client._transport import TransportStreams
from mcp.client.stdio import (
    _create_platform_compatible_process,
    _drain_stdout,
    _get_executable_command,
    _stop_server_process,
    get_default_environment,
)
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter

WRITER_FLUSH_TIMEOUT = 0.5
"""Seconds the writer gets to send what the session already handed it, before stdin closes."""


class LineSplitter:
    """Bytes in, whole lines out; each byte is looked at and copied a bounded number of times."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines that `chunk` completes, without their newline."""
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            self._pieces.append(chunk)
            return []
        lines[0] = b"".join([*self._pieces, lines[0]])
        rest = lines.pop()
        self._pieces = [rest] if rest else []
        return lines


@asynccontextmanager
async def stdio_transport(
    server: StdioServerParameters, errlog: TextIO
) -> AsyncIterator[TransportStreams]:
    """Start `server` and exchange newline-delimited JSON-RPC with it, as `stdio_client`
    does; on the way out, stdin closes and the SDK stops the process tree (shielded)."""
    process = await _create_platform_compatible_process(
        command=await _get_executable_command(server.command),
        args=server.args,
        env=get_default_environment() | (server.env or {}),
        errlog=errlog,
        cwd=server.cwd,
    )
    to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()

    def parsed(line: bytes) -> SessionMessage | Exception:
        """A message, or the error for the session to report. Parsed from the bytes: MCP's
        stdio is UTF-8, and a decoded copy of a large result would double its memory."""
        try:
            return SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
        except ValueError as error:
            return error

    async def read() -> None:
        assert process.stdout is not None
        lines = LineSplitter()
        try:
            async with to_session:
                try:
                    async for chunk in process.stdout:
                        for line in lines.feed(chunk):
                            # One message at a time: nothing is read ahead of the session.
                            await to_session.send(parsed(line))
                finally:
                    await _drain_stdout(process)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError):
            pass  # the session or the server went away; the session sees the stream end

    async def write() -> None:
        assert process.stdin is not None
        try:
            async with from_session:
                async for message in from_session:
                    json = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    data = (json + "\n").encode(server.encoding, server.encoding_error_handler)
                    await process.stdin.send(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await to_session.aclose()  # the server stopped reading: end the session's wait
        finally:
            writer_done.set()

    async def stop() -> None:
        from_server.close()
        to_server.close()
        with anyio.move_on_after(WRITER_FLUSH_TIMEOUT):
            await writer_done.wait()
        await _stop_server_process(process)
        for stream in (from_server, to_server, to_session, from_session):
            await stream.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read)
        tasks.start_soon(write)
        try:
            yield from_server, to_server
        finally:
            with anyio.CancelScope(shield=True):
                await stop()
            tasks.cancel_scope.cancel()
