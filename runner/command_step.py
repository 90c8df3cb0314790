"""Command steps (`run:`): a local program runs, its output is kept, its process tree ends.

The command leads a session of its own (processes.py) with stdin closed and only the few
inherited variables plus its `env:`, so it can neither wait for a terminal nor see a CI
job's secrets it did not ask for. Its stdout and stderr are read to the end (at most
`MAX_KEPT_BYTES` of each stay in memory); whatever it started is stopped when it ends,
fails, runs out of time, or the run stops.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream

from . import processes, templating
from .errors import StepFailedError
from .results import cut, full_result_fields
from .runlog import StepEmit
from .spec.model import CommandStep

MAX_KEPT_BYTES = 32 * 1024 * 1024
"""Bytes of one stream kept in memory; the rest is counted and dropped with a note."""
STOP_GRACE = 1.0
"""Seconds the command's leftover processes get between SIGTERM and SIGKILL."""


async def run_step(
    step: CommandStep,
    context: Mapping[str, Any],
    *,
    base_dir: Path,
    timeout: float | None,
    emit: StepEmit,
) -> tuple[dict[str, Any], str | None]:
    """Run one command step: its output (`stdout`, `stderr`, `exit_code`) and, when the exit
    code is not one of its `ok_codes`, why it failed. Raises StepFailedError when the command
    cannot start or runs out of time."""
    argv = command_line(step, context)
    where = templating.render_text(step.cwd, context) if step.cwd else "."
    cwd = str(base_dir / where)
    env = {name: templating.render_text(value, context) for name, value in step.env.items()}
    emit("command_started", {"argv": argv, "cwd": where})  # as written: the same everywhere
    try:
        outcome = await run_command(argv, env=env, cwd=cwd, timeout=timeout)
    except TimeoutError:
        raise StepFailedError(
            f"command {argv[0]} did not finish within {timeout:g} s",
            hint="raise the step's `timeout:`; what it started was stopped",
        ) from None
    except OSError as error:
        raise _not_started(error, argv[0], cwd) from None
    output: dict[str, Any] = {"exit_code": outcome.exit_code}
    for stream, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
        output[stream] = cut(text, step.max_output_chars)
        if output[stream] != text:
            emit("command_output", {"stream": stream, **full_result_fields(text)})
    emit("command_finished", dict(output))
    if outcome.exit_code in step.ok_codes:
        return output, None
    last = next((line for line in reversed(outcome.stderr.splitlines()) if line.strip()), "")
    detail = f": {last.strip()[:200]}" if last else ""
    return output, f"command {argv[0]} exited with {outcome.exit_code}{detail}"


def command_line(step: CommandStep, context: Mapping[str, Any]) -> list[str]:
    """The rendered arguments: a shell's command line, or each item of `run:`, where an item
    that renders to a list gives one argument per element."""
    if isinstance(step.run, str):
        return ["/bin/sh", "-c", templating.render_text(step.run, context)]
    argv: list[str] = []
    for index, item in enumerate(step.run):
        value = templating.render_value(item, context)
        for part in value if isinstance(value, list) else [value]:
            if isinstance(part, (dict, list)) or part is None:
                raise StepFailedError(
                    f"run[{index}] gave {type(part).__name__}, not a command argument",
                    hint="render it to text, e.g. {{ value | tojson }}, or to a list of texts",
                )
            argv.append(str(part).lower() if isinstance(part, bool) else str(part))
    if not argv or not argv[0]:
        raise StepFailedError("the command is empty", hint="`run:` starts with the program")
    return argv


def _not_started(error: OSError, program: str, cwd: str) -> StepFailedError:
    if isinstance(error, NotADirectoryError) or error.errno == errno.ENOTDIR:
        return StepFailedError(
            f"working directory not found: {cwd}",
            hint="`cwd:` is relative to the workflow file's directory",
        )
    if isinstance(error, FileNotFoundError):
        return StepFailedError(
            f"command not found: {program}",
            hint="install it or give its full path; a command sees lmflow's PATH, HOME, "
            "LOGNAME, SHELL, TERM and USER, plus its own `env:`",
        )
    return StepFailedError(f"cannot run {program}: {error.strerror or error}")


@dataclass(frozen=True)
class CommandOutcome:
    exit_code: int
    stdout: str
    stderr: str


async def run_command(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None, timeout: float | None
) -> CommandOutcome:
    """Run `argv` to its end. Raises OSError when it cannot start (not found, not
    executable, no such directory) and TimeoutError after `timeout` seconds."""
    process = await processes.spawn(argv, env, cwd, stdin=subprocess.DEVNULL)
    try:
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            stdout, stderr = _Kept(), _Kept()
            async with anyio.create_task_group() as group:
                assert process.stdout is not None and process.stderr is not None
                group.start_soon(stdout.read, process.stdout)
                group.start_soon(stderr.read, process.stderr)
            exit_code = await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await processes.stop_tree(process.pid, STOP_GRACE)
            await process.aclose()
    return CommandOutcome(exit_code, stdout.text(), stderr.text())


class _Kept:
    """One output stream, read to its end, of which the first `MAX_KEPT_BYTES` are kept."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = 0

    async def read(self, stream: ByteReceiveStream) -> None:
        async for chunk in stream:
            room = MAX_KEPT_BYTES - len(self.data)
            self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[... {self.dropped:,} more bytes not kept]"
        return text
