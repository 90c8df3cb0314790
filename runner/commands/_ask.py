"""The terminal as `lmflow run`'s asker: an `ask:` step's question on stderr, the answer read
from stdin, with the live progress view paused meanwhile so nothing draws over the question.
Used only when stdin and stderr are both terminals."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import anyio
import click

from ..ask_step import Question
from ..errors import StepFailedError
from ..runlog import Sink


class TerminalAsker:
    """Asks one question at a time (concurrent steps wait their turn) until it gets an answer
    its type takes; Enter gives the default. A closed stdin fails the step."""

    def __init__(
        self,
        pause: Callable[[], contextlib.AbstractContextManager[None]],
        stdin: TextIO | None = None,
    ) -> None:
        self._pause = pause
        self._stdin = stdin or sys.stdin
        self._turn = anyio.Lock()

    async def __call__(self, question: Question) -> Any:
        async with self._turn:
            with self._pause():
                click.echo(err=True)
                click.secho(f"? {question.step}", bold=True, err=True)
                click.echo(question.text, err=True)
                while True:
                    click.echo(_prompt(question), nl=False, err=True)
                    line = await anyio.to_thread.run_sync(
                        self._stdin.readline, abandon_on_cancel=True
                    )
                    if not line:
                        click.echo(err=True)
                        raise StepFailedError(
                            "no answer: the input was closed",
                            hint=f"pass --answer {question.step}=VALUE",
                        )
                    if not line.strip() and question.has_default:
                        return question.default
                    try:
                        return question.parse(line.rstrip("\n"))
                    except ValueError as error:
                        click.secho(f"  {error}", fg="yellow", err=True)


def _prompt(question: Question) -> str:
    if question.type == "boolean":
        options = "y/n"
        if question.has_default:
            options = "Y/n" if question.default else "y/N"
    elif question.type == "enum":
        options = "/".join(question.choices)
    else:
        options = ""
    default = (
        f" [{question.default}]" if question.has_default and question.type != "boolean" else ""
    )
    return f"  answer{f' ({options})' if options else ''}{default}: "


def terminal_asker(views: Sequence[Sink]) -> TerminalAsker | None:
    """The asker when stdin and stderr are terminals (None otherwise): it pauses the live
    views among `views` while a question is on the screen."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    if not views:  # --quiet: nothing to pause
        return TerminalAsker(contextlib.nullcontext)
    from ._live import LiveView

    live = [view for view in views if isinstance(view, LiveView)]

    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for view in live:
                stack.enter_context(view.paused())
            yield

    return TerminalAsker(paused)
