"""The progress of `lmflow batch` on stderr: rows done/failed/total, rate, ETA.

On a terminal one line redrawn as rows finish; elsewhere (CI logs, pipes) a whole line every
tenth of the batch and at the end. Bad rows and hosts leaving the rotation get a line each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..batch import RowOutcome
from ._console import interactive


class BatchProgress:
    """The batch's `Observer` (runner/batch.py) for a person or a log."""

    def __init__(self, rows_file: Path, quiet: bool) -> None:
        self.rows_file = rows_file
        self.quiet = quiet
        self.live = interactive(sys.stderr)
        self.total = 0
        self.done = 0
        self.failed = 0
        self.ran = 0
        self.started_at = time.monotonic()

    def started(self, total: int, already_done: int) -> None:
        self.total = total
        self.done += already_done
        self.started_at = time.monotonic()
        if already_done and not self.quiet:
            click.echo(f"resuming: {already_done} of {total} rows already done", err=True)

    def finished(self, outcome: RowOutcome) -> None:
        self.done += 1
        if outcome.status == "invalid":
            self._line(f"{self.rows_file}:{outcome.line}: invalid row: {outcome.error}")
        else:
            self.ran += 1
        if outcome.status != "succeeded":
            self.failed += 1
        if self.quiet or not self.total:
            return
        if self.live:
            click.echo("\r" + self.status() + "\033[K", nl=False, err=True)
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            click.echo(self.status(), err=True)

    def host_down(self, host: str | None, reason: str) -> None:
        self._line(f"host {host or '(default)'} taken out of the rotation: {reason}")

    def close(self) -> None:
        if self.live and not self.quiet and self.total:
            click.echo(err=True)

    def status(self) -> str:
        elapsed = time.monotonic() - self.started_at
        rate = self.ran / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = f", ETA {left / rate:.0f}s" if rate and left else ""
        return f"rows {self.done}/{self.total} done, {self.failed} failed, {rate:.1f} rows/s{eta}"

    def _line(self, text: str) -> None:
        """A note of its own line (bad rows are shown even with --quiet: they are errors)."""
        if self.live and not self.quiet:
            text = "\r\033[K" + text
        click.echo(text, err=True)
