"""The console view of a run: one line per step on stderr, updated as things happen."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_OK, EXIT_STEP_FAILED
from ..executor import RunResult
from ..runlog import Event

if TYPE_CHECKING:
    from ..api import WorkflowResult

MAX_DETAIL = 100


def _short(value: Any, limit: int = MAX_DETAIL) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsoleView:
    """Renders run-log events for a person watching the terminal (stderr)."""

    def __init__(self, verbosity: int = 1) -> None:
        self.verbosity = verbosity  # 0 quiet, 1 normal, 2 verbose

    def __call__(self, event: Event) -> None:
        if self.verbosity == 0:
            return
        line = self._line(event)
        if line is not None:
            click.echo(line, err=True)

    def _line(self, event: Event) -> str | None:
        """One whole line per event: with several steps running, each detail line names
        its step (and item), so lines of different steps can interleave but never mix."""
        data = event.data
        step = event.step
        who = f"{step}[{event.item}]" if event.item is not None else f"{step}"
        if event.type == "step_started":
            what = data.get("tool") or data.get("model") or ""
            return click.style(f"▶ {step}", bold=True) + (f"  {what}" if what else "")
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
        if event.type == "llm_response" and self.verbosity > 1 and data.get("content"):
            return f"    {who} round {data.get('round')} answer: {_short(data.get('content'))}"
        if event.type == "item_finished" and data.get("status") == "failed":
            return click.style(f"    {who} failed: {data.get('error')}", fg="red")
        if event.type == "step_finished" and data.get("reused_from"):
            return click.style(f"↺ {step} reused from run {data['reused_from']}", fg="green")
        if event.type == "step_finished":
            return self._finished(step, data)
        if event.type == "run_finished":
            status = data.get("status")
            colour = "green" if status == "succeeded" else "red"
            usage = data.get("usage") or {}
            tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            return click.style(f"run {status}", fg=colour, bold=True) + (
                f" in {data.get('duration', 0):.1f}s, {tokens} tokens"
            )
        return None

    def _finished(self, step: str | None, data: dict[str, Any] | Any) -> str:
        status = data.get("status")
        if status == "skipped":
            return click.style(f"- {step} skipped: {data.get('reason')}", dim=True)
        if status == "failed":
            return click.style(f"✗ {step} failed: {data.get('error')}", fg="red")
        detail = []
        if data.get("rounds"):
            detail.append(f"{data['rounds']} round(s)")
        if data.get("tool_calls"):
            detail.append(f"{data['tool_calls']} tool call(s)")
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
            click.echo(f"{name}: {text}" if len(result.outputs) > 1 else text)
    return EXIT_OK if result.status == "succeeded" else EXIT_STEP_FAILED
