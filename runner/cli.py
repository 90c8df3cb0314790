"""The `lmflow` command group. Commands are imported only when invoked, so `lmflow --help`
and `lmflow validate` never pay for mcp or httpx; errors become exit codes here, once."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
import signal
import sys
from typing import Any, NoReturn

import click

from . import __version__
from .errors import LmflowError, Stopped

# name -> "module:attribute"; each module in runner/commands/ defines one click command.
COMMANDS: dict[str, str] = {
    "init": "runner.commands.init:command",
    "validate": "runner.commands.validate:command",
    "schema": "runner.commands.schema:command",
    "models": "runner.commands.models:command",
    "doctor": "runner.commands.doctor:command",
    "run": "runner.commands.run:command",
    "tools": "runner.commands.tools:command",
    "auth": "runner.commands.auth:command",
    "agent": "runner.commands.agent:command",
    "runs": "runner.commands.runs:command",
    "report": "runner.commands.report:command",
    "serve": "runner.commands.serve:command",
    "batch": "runner.commands.batch:command",
}

SHORT_HELP: dict[str, str] = {
    "init": "Write a commented starter workflow.",
    "validate": "Check workflow files without running them.",
    "schema": "Print the workflow JSON Schema.",
    "models": "List the models the LM Studio server has.",
    "doctor": "Check that LM Studio, auth, lms and the cache are ready.",
    "run": "Run a workflow.",
    "tools": "List the MCP tools a workflow's servers offer.",
    "auth": "Log in to a remote MCP server (OAuth) once, for later runs.",
    "agent": "Run the agent engine once, without a workflow file.",
    "runs": "Show the history of runs.",
    "report": "Write an HTML page of a run.",
    "serve": "Serve workflows and a local agent as MCP tools.",
    "batch": "Run a workflow once per row of a JSONL or CSV file.",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(cmd_name):
            return None
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown command gets the closest names as a suggestion (`valdate`)."""
        name = args[0] if args else ""
        if args and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, list(COMMANDS), n=2, cutoff=0.6)
            if close:
                ctx.fail(f"No such command {name!r}. Did you mean {' or '.join(close)}?")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """`lmflow --help` lists the commands from SHORT_HELP, importing none of them."""
        rows = [(name, SHORT_HELP[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(name: str) -> bool:
    module_name = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lmflow")
def cli() -> None:
    """Run version-controlled LLM workflows against LM Studio, with MCP tools.

    \b
    Exit codes: 0 ok, 1 a step failed, 2 invalid workflow or command line,
    3 environment not ready (LM Studio, model, MCP server), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP).
    """


def report(error: LmflowError) -> None:
    """Print an lmflow error the way every command does: message, then how to fix it; for an
    invalid workflow, every problem with its place in the file."""
    for problem in getattr(error, "problems", ()):
        click.echo(problem.format(), err=True)
    click.secho(f"error: {error.message}", fg="red", err=True)
    if error.hint:
        click.echo(f"  hint: {error.hint}", err=True)


def _quiet_libraries() -> None:
    """The MCP SDK (and the OpenTelemetry exporter) log through `logging`; without a handler
    Python would print their warnings over the progress display. Our run log records what
    matters, and `run --otel` says itself when a trace was not taken."""
    for name in ("mcp", "httpx", "httpx2", "opentelemetry"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP end a command the way Ctrl-C does (runner/signals.py takes over
    while a command's async work runs); a signal the caller ignores (nohup) stays ignored.
    Returns the handlers to put back."""
    previous: dict[int, Any] = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if previous[signum] != signal.SIG_IGN:
            signal.signal(signum, _raise_stopped)
    return previous


def _run(argv: list[str] | None) -> int:
    """Run the command; every way it can end becomes an exit code here, once."""
    try:
        code = cli.main(args=argv, prog_name="lmflow", standalone_mode=False)
    except LmflowError as error:
        report(error)
        return error.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort) as error:
        # click turns a KeyboardInterrupt into an Abort; the signal is in its cause.
        cause = error.__cause__ if isinstance(error, click.exceptions.Abort) else error
        stopped = cause if isinstance(cause, Stopped) else Stopped()
        click.echo(stopped.reason, err=True)
        return stopped.exit_code
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> NoReturn:
    """The console-script entry point (`argv` None: the program itself).

    The program exits without the interpreter's teardown: once the mcp SDK's thousands of
    pydantic classes are loaded that takes most of a second, after the servers and the log
    are closed, and a stop signal arriving in it could only end in a traceback. Called
    with `argv` (tests, other Python code) it raises SystemExit and puts the signal
    handlers back instead.
    """
    _quiet_libraries()
    previous = _stop_on_signals()
    try:
        code = _run(argv)
    finally:
        if argv is not None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if argv is not None:
        sys.exit(code)
    for signum in STOP_SIGNALS:  # the command is over: nothing left to stop
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
