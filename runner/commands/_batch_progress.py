"""The progress of `lmflow batch` on stderr: rows done/failed/total, rows/s, tokens/s, ETA.

On a terminal a rich progress bar, redrawn as rows finish, with notes (bad rows, hosts) as
lines above it; elsewhere (CI logs, pipes) a whole line every tenth of the batch and at the
end. Bad rows and hosts leaving the rotation get a line each, even with --quiet.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from ..batch import RowOutcome
from ..batch_hosts import Host
from ._console import interactive


class BatchProgress:
    """The batch's `Observer` (runner/batch.py) for a person or a log."""

    def __init__(self, rows_file: Path, quiet: bool) -> None:
        self.rows_file = rows_file
        self.quiet = quiet
        self.total = 0
        self.done = 0
        self.failed = 0
        self.ran = 0
        self.tokens = 0
        """Completion tokens of the rows this command ran: what tokens/s counts."""
        self.started_at = time.monotonic()
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if interactive(sys.stderr) and not quiet:
            self.bar = Progress(
                TextColumn("rows"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                console=Console(stderr=True),
                transient=False,
            )

    def started(self, total: int, already_done: int) -> None:
        self.total = total
        self.done += already_done
        self.started_at = time.monotonic()
        if already_done and not self.quiet:
            self._line(f"resuming: {already_done} of {total} rows already done")
        if self.bar is not None and total:
            self.task = self.bar.add_task("rows", total=total, completed=self.done, rates="")
            self.bar.start()

    def host_ready(self, host: Host) -> None:
        if self.quiet:
            return
        source = {"parallel": "as the host reports", "--slots": "--slots"}.get(
            host.capacity_from, "default"
        )
        if host.loaded is None:  # the workflow asks no model: nothing to say about hosts
            return
        loaded = "models loaded" if host.loaded else "models not loaded yet"
        self._line(f"host {host.url or '(default)'}: {host.capacity} slots ({source}), {loaded}")

    def finished(self, outcome: RowOutcome) -> None:
        self.done += 1
        if outcome.status == "invalid":
            self._line(
                f"{self.rows_file}:{outcome.line}: invalid row: {outcome.error}", always=True
            )
        else:
            self.ran += 1
            self.tokens += (outcome.usage or {}).get("completion_tokens", 0)
        if outcome.status != "succeeded":
            self.failed += 1
        if self.quiet or not self.total:
            return
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=self.done, rates=self.rates())
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            click.echo(self.status(), err=True)

    def host_down(self, host: str | None, reason: str) -> None:
        self._line(f"host {host or '(default)'} taken out of the rotation: {reason}", always=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def status(self) -> str:
        return f"rows {self.done}/{self.total} done, {self.rates()}"

    def rates(self) -> str:
        elapsed = time.monotonic() - self.started_at
        rate = self.ran / elapsed if elapsed > 0 else 0.0
        tokens = self.tokens / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = f", ETA {left / rate:.0f}s" if rate and left else ""
        return f"{self.failed} failed, {rate:.1f} rows/s, {tokens:.0f} tokens/s{eta}"

    def _line(self, text: str, *, always: bool = False) -> None:
        """A note on its own line, above the bar on a terminal; `always`: errors, shown
        even with --quiet."""
        if self.quiet and not always:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(text, err=True)
