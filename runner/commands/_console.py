"""The console view of a run on stderr: the plain view (one whole line per event, for CI
logs and pipes), the choice between it and the live view (_live.py) on a terminal, and the
outputs on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_OK, EXIT_STEP_FAILED
from ..executor import RunResult
from ..runlog import Event, Sink
from ..speed import response_speed
from ._tracker import SUMMARY_HEADERS, RunTracker

if TYPE_CHECKING:
    from ..api import WorkflowResult

MAX_DETAIL = 100
INDENT = "      "


def _short(value: Any, limit: int = MAX_DETAIL) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def indented(text: str, indent: str = INDENT) -> str:
    """Continuation lines of a multi-line text indented under its first line."""
    return text.replace("\n", "\n" + indent)


def interactive(stream: Any) -> bool:
    """A person is watching `stream`: a terminal that can redraw lines."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def progress_view(quiet: bool, verbose: bool) -> Iterator[tuple[Sink, ...]]:
    """The sinks that show a run's progress on stderr: none with --quiet, the live view on a
    terminal (rich is imported only then: `lmflow validate` and pipes never pay for it),
    else the plain line-per-event view."""
    if quiet:
        yield ()
        return
    verbosity = 2 if verbose else 1
    if not interactive(sys.stderr):
        yield (ConsoleView(verbosity),)
        return
    from ._live import LiveView

    live = LiveView(verbosity)
    try:
        yield (live,)
    finally:
        live.close()


def summary_table(rows: Sequence[Sequence[str]]) -> str:
    """The per-step summary as aligned plain-text columns."""
    table = [SUMMARY_HEADERS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(SUMMARY_HEADERS))]
    numeric = {3, 4, 5, 6, 7}
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in table
    )


class ConsoleView:
    """Renders run-log events as plain lines on stderr (CI logs, pipes), then a summary."""

    def __init__(self, verbosity: int = 1) -> None:
        self.verbosity = verbosity  # 0 quiet, 1 normal, 2 verbose
        self.tracker = RunTracker()

    def __call__(self, event: Event) -> None:
        if self.verbosity == 0:
            return
        self.tracker(event)
        line = self.line(event)
        if line is not None:
            click.echo(line, err=True)
        if event.type == "run_finished" and self.tracker.summary():
            click.echo(summary_table(self.tracker.summary()), err=True)

    def line(self, event: Event) -> str | None:
        """One whole line per event: with several steps running, each detail line names
        its step (and item), so lines of different steps can interleave but never mix."""
        data = event.data
        step = event.step
        who = f"{step}[{event.item}]" if event.item is not None else f"{step}"
        if event.type == "phase_started":
            what = "checking models" if data.get("phase") == "models" else "starting server"
            return click.style(f"… {what} {data.get('name') or ''}".rstrip(), dim=True)
        if event.type == "phase_finished":
            what = "models checked" if data.get("phase") == "models" else "server"
            name = f" {data['name']} ready" if data.get("name") else ""
            return click.style(f"✓ {what}{name}", dim=True) + f" in {data.get('duration', 0):.1f}s"
        if event.type == "step_started":
            title = data.get("name")
            what = " · ".join(
                part
                for part in (title if title and title != step else None,
                             data.get("tool") or data.get("model"))
                if part
            )  # fmt: skip
            return click.style(f"▶ {step}", bold=True) + (f"  {what}" if what else "")
        if event.type == "llm_response":
            return self._answer(who, data)
        if event.type == "embed_response":
            usage = data.get("usage") or {}
            return (
                f"    {who} batch {data.get('batch')}: {data.get('vectors')} vector(s) of "
                f"{data.get('dimension')}, {usage.get('prompt_tokens', 0)} tokens"
            )
        if event.type == "tool_call":
            arguments = _short(data.get("arguments"))
            return f"    {who} round {data.get('round')}: {data.get('name')} {arguments}"
        if event.type == "tool_result" and (data.get("is_error") or self.verbosity > 1):
            label = click.style("tool error", fg="yellow") if data.get("is_error") else "result"
            return f"    {who} {label}: {_short(data.get('content'))}"
        if event.type == "notice":  # about this machine: a model not loaded, a token not sent
            hint = f"\n      hint: {data['hint']}" if data.get("hint") else ""
            return click.style(f"note: {data.get('message')}", fg="yellow") + hint
        if event.type == "agent_notice":
            return click.style(
                f"    {who} note: {data.get('kind')}: {_short(data.get('detail'))}", fg="yellow"
            )
        if event.type == "iteration_finished" and data.get("status") == "succeeded":
            until = "true: done" if data.get("until") else "false"
            return f"    {who} iteration {data.get('iteration')}: until is {until}"
        if event.type == "item_finished" and data.get("status") == "failed":
            return click.style(f"    {who} failed: {indented(str(data.get('error')))}", fg="red")
        if event.type == "step_finished" and data.get("reused_from"):
            return click.style(f"↺ {step} reused from run {data['reused_from']}", fg="green")
        if event.type == "step_finished":
            return self._finished(step, data)
        if event.type == "run_finished":
            status = data.get("status")
            colour = "green" if status == "succeeded" else "red"
            usage = data.get("usage") or {}
            tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            return (
                click.style(f"run {status}", fg=colour, bold=True)
                + (f" in {data.get('duration', 0):.1f}s, {tokens} tokens")
                + self._unshown_error(data)
            )
        return None

    def _unshown_error(self, data: Mapping[str, Any]) -> str:
        """A failed run's reason when no step line showed it: an output that did not render
        (`output 'best': nearest: k must be ...`) fails a run whose steps all succeeded."""
        error = data.get("error")
        if data.get("status") != "failed" or not error:
            return ""
        if any(s.status == "failed" for s in self.tracker.steps.values()):
            return ""
        return "\n" + click.style(f"  {indented(str(error))}", fg="red")

    def _answer(self, who: str, data: Any) -> str | None:
        """A model's answer: its round, tokens and speed; the text too with --verbose."""
        ttft, speed = response_speed(data)
        completion = (data.get("usage") or {}).get("completion_tokens")
        facts = [f"{completion} tokens" if completion is not None else None]
        facts.append(f"{speed:.1f} tok/s" if speed else None)
        facts.append(f"first token {ttft:.2f}s" if ttft is not None else None)
        line = f"    {who} round {data.get('round')}: " + ", ".join(f for f in facts if f)
        if self.verbosity > 1 and data.get("content"):
            line += f"\n    {who} round {data.get('round')} answer: {_short(data.get('content'))}"
        return line

    def _finished(self, step: str | None, data: dict[str, Any] | Any) -> str:
        status = data.get("status")
        if status == "skipped":
            return click.style(f"- {step} skipped: {data.get('reason')}", dim=True)
        if status == "failed":
            hint = f"\n  hint: {data['hint']}" if data.get("hint") else ""
            error = indented(str(data.get("error")))
            return click.style(f"✗ {step} failed: {error}", fg="red") + hint
        if status == "interrupted":
            return click.style(
                f"■ {step} interrupted after {data.get('duration', 0):.1f}s", fg="yellow"
            )
        detail = []
        if data.get("rounds"):
            detail.append(f"{data['rounds']} round(s)")
        if data.get("tool_calls"):
            detail.append(f"{data['tool_calls']} tool call(s)")
        usage = data.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        if tokens:
            detail.append(f"{tokens} tokens")
        detail.append(f"{data.get('duration', 0):.1f}s")
        return click.style(f"✓ {step}", fg="green") + "  " + ", ".join(detail)


def print_result(result: RunResult | WorkflowResult, as_json: bool) -> int:
    """The run's outputs on stdout (the whole result with --json); returns the exit code."""
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False, default=str))
    elif result.status == "succeeded":  # a failed run's error is on stderr, not half outputs
        for name, value in result.outputs.items():
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value, ensure_ascii=False, default=str)
            )
            # One output is printed as it is; several are `name: value`, each value's
            # further lines indented under its name.
            click.echo(f"{name}: {indented(text, '  ')}" if len(result.outputs) > 1 else text)
    return EXIT_OK if result.status == "succeeded" else EXIT_STEP_FAILED
