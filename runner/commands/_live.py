"""The live view of a run on a terminal (rich): finished things scroll up as plain lines,
while the bottom of the screen shows what is under way — each start-up phase and each
running step with its title, model, round, elapsed time and speed — redrawn a few times a
second. A summary table ends the run. Imported only when stderr is a terminal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ..runlog import Event
from ._console import ConsoleView
from ._tracker import SUMMARY_HEADERS

SHOWN_LIVE = frozenset({"phase_started", "step_started", "item_started", "llm_request"})
"""Events the live region shows while they last; every other line scrolls up as usual."""
REFRESHES_PER_SECOND = 8


class LiveView:
    """A run-log sink drawing the run on `console` (stderr by default)."""

    def __init__(self, verbosity: int = 1, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.lines = ConsoleView(verbosity)
        self.tracker = self.lines.tracker
        self._live = Live(
            self,
            console=self.console,
            refresh_per_second=REFRESHES_PER_SECOND,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._started = False
        self._held: list[str] | None = None
        """Lines kept back while a question is on the screen (`paused`)."""

    def __call__(self, event: Event) -> None:
        self.tracker(event)
        if self._held is not None:
            line = self.lines.line(event) if event.type not in SHOWN_LIVE else None
            if line is not None:
                self._held.append(line)
            return
        if not self._started and event.type != "run_finished":
            self._live.start()
            self._started = True
        if event.type not in SHOWN_LIVE:
            line = self.lines.line(event)
            if line is not None:
                self.console.print(Text.from_ansi(line))
        if event.type == "run_finished":
            self.close()
            rows = self.tracker.summary()
            if rows:
                self.console.print(self.summary(rows))
        elif self._started:
            self._live.refresh()

    def close(self) -> None:
        """Stop redrawing (the live region disappears); safe to call twice."""
        if self._started:
            self._live.stop()
            self._started = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """While a person reads and answers a question: no redrawing, no new lines; what
        happened meanwhile is shown after, and the live region comes back."""
        self.close()
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for line in held:
                self.console.print(Text.from_ansi(line))

    def __rich__(self) -> RenderableType:
        """What is under way, drawn afresh at every refresh (elapsed times move on)."""
        now = time.time()
        rows: list[RenderableType] = []
        for phase in list(self.tracker.phases.values()):
            rows.append(Spinner("dots", Text(f"{phase.title}  {now - phase.started:.1f}s")))
        for step in list(self.tracker.running.values()):
            facts = [step.model, f"round {step.round}" if step.round else None]
            facts.append(f"{now - step.started:.1f}s")
            facts.append(f"{step.speed:.1f} tok/s" if step.speed else None)
            title = Text(step.label, style="bold")
            if step.title != step.step:
                title.append(f"  {step.title}", style="")
            title.append("  " + " · ".join(fact for fact in facts if fact), style="dim")
            rows.append(Spinner("dots", title))
        return Group(*rows)

    @staticmethod
    def summary(rows: list[tuple[str, ...]]) -> Table:
        table = Table(title=None, box=None, header_style="bold", pad_edge=False)
        for index, header in enumerate(SUMMARY_HEADERS):
            table.add_column(header, justify="right" if index >= 3 else "left")
        for row in rows:
            table.add_row(*row)
        return table
