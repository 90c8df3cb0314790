"""Stop signals while a command's async work runs: Ctrl-C, SIGTERM and SIGHUP alike.

The first signal cancels the work, so a run ends its log and stops its MCP servers as on
any other exit. The second kills every server's process tree at once (the clean-up then
has nothing left to wait for); a third leaves without any clean-up.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import processes
from .errors import Stopped

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

T = TypeVar("T")

_received: list[int] = []


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`; a stop signal ends it with `Stopped` (exit 128 + signal)."""
    _received.clear()
    try:
        return asyncio.run(_guarded(main))
    except BaseException as error:
        if not _received or isinstance(error, Stopped):
            raise
        raise Stopped(_received[0]) from None


def stopping() -> bool:
    """Whether a stop signal has arrived: a cancellation now is the command stopping."""
    return bool(_received)


def stop_reason(error: BaseException) -> str:
    """Why `error` (a cancellation or a KeyboardInterrupt) ended a run, in the log's words."""
    if isinstance(error, Stopped):
        return error.reason
    return Stopped(_received[0]).reason if _received else "interrupted"


async def _guarded(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(signum: int) -> None:
        _received.append(signum)
        if len(_received) == 1:
            task.cancel()
        elif len(_received) == 2:
            processes.kill_all()
        else:
            os._exit(128 + _received[0])

    # A signal the caller ignores (`nohup` ignores SIGHUP) stays ignored.
    previous = {
        s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN
    }
    for signum in previous:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await main
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)
