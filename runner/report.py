"""A run directory -> one self-contained HTML page (`lmflow report`).

The page is built from what the run left behind (events.jsonl and result.json), so it works
for any finished, failed or interrupted run, and for a replay alike. Everything it shows
comes from the log, where secrets are masked already; every value is HTML-escaped by the
template (autoescape), and the page allows no script and no network at all (its
Content-Security-Policy), so a hostile model answer can only ever be text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .runlog import RunOrder, read_events, vector_summary
from .speed import response_speed

TEMPLATE = "report.html.j2"


@dataclass
class ToolCall:
    """One tool call and what it gave back."""

    id: Any
    name: str
    arguments: str
    result: str | None = None
    is_error: bool = False
    full_result: str | None = None


@dataclass
class Round:
    """One model turn of a step (or of one `for_each` item): its answer and its tool calls."""

    label: str
    content: str | None = None
    reasoning: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    tokens_per_second: float | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Step:
    """Everything the page says about one step."""

    id: str
    title: str | None = None
    model: str | None = None
    tool: str | None = None
    kind: str | None = None
    status: str = "not run"
    error: str | None = None
    reason: str | None = None
    output: str | None = None
    rounds: int = 0
    tool_call_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration: float | None = None
    start: float | None = None
    """Seconds from the start of the run."""
    end: float | None = None
    turns: list[Round] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """How deep the step is nested: 1 for a sub-workflow's step (`PARENT/INNER`)."""
        return self.id.count("/")

    @property
    def ttft(self) -> float | None:
        """The first answer's time to first token, when the server reported it."""
        return next((turn.ttft for turn in self.turns if turn.ttft is not None), None)

    @property
    def tokens_per_second(self) -> float | None:
        speeds = [
            (turn.completion_tokens, turn.completion_tokens / turn.tokens_per_second)
            for turn in self.turns
            if turn.tokens_per_second and turn.completion_tokens
        ]
        seconds = sum(s for _, s in speeds)
        return sum(t for t, _ in speeds) / seconds if seconds else None


@dataclass
class Report:
    """The page's data: the run, its steps in run order, the time line's length."""

    run_id: str
    workflow: str
    path: str
    status: str
    error: str | None
    inputs: str
    outputs: list[tuple[str, str]]
    duration: float | None
    prompt_tokens: int
    completion_tokens: int
    started: str | None
    steps: list[Step]
    notices: list[str]
    span: float
    """Seconds the time line covers."""
    truncated: bool = False


def render_report(run_dir: Path) -> str:
    """The HTML page of the run in `run_dir`."""
    import jinja2

    report = build_report(run_dir)
    source = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(source).render(report=report, percent=_percent(report.span))


def build_report(run_dir: Path) -> Report:
    events_path = run_dir / "events.jsonl"
    if not events_path.is_file():
        raise ConfigurationError(
            f"{run_dir.name} has no events.jsonl: its events were written elsewhere (--log) "
            "or not at all (--no-log)",
            hint="lmflow report needs the run directory's own events.jsonl",
        )
    read = read_events(events_path)
    result = _result(run_dir / "result.json")
    return _Builder(read.events, result, run_dir.name).report(truncated=read.truncated_line)


def _result(path: Path) -> dict[str, Any]:
    """result.json when it is there and readable; a crashed run may have none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str:
    """A value as the page shows it: strings as they are, anything else as indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _seconds(stamp: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return None


class _Builder:
    """Folds the events, in order, into the page's data."""

    def __init__(self, events: Sequence[Mapping[str, Any]], result: Mapping[str, Any], name: str):
        self.events = events
        self.result = result
        self.name = name
        self.steps: dict[str, Step] = {}
        self.turns: dict[tuple[str, Any, Any], Round] = {}
        self.notices: list[str] = []
        self.origin: float | None = None

    def report(self, truncated: int | None) -> Report:
        started = next((e for e in self.events if e.get("type") == "run_started"), {})
        finished = next((e for e in self.events if e.get("type") == "run_finished"), {})
        order = RunOrder()  # nested steps right after their loop step, iteration by iteration
        for event in self.events:
            order.see(event.get("type"), event.get("step"), event)
        for step_id in started.get("steps") or ():
            self._step(str(step_id))
        self.origin = _seconds(started.get("time")) if started else None
        for event in self.events:
            self._fold(event)
        self._from_result()
        usage = finished.get("usage") or self.result.get("usage") or {}
        ends = [step.end for step in self.steps.values() if step.end is not None]
        duration = finished.get("duration", self.result.get("duration"))
        span = max([*ends, float(duration or 0.0), 0.001])
        outputs = finished.get("outputs", self.result.get("outputs")) or {}
        return Report(
            run_id=str(started.get("run_id") or self.result.get("run_id") or self.name),
            workflow=str(started.get("workflow") or self.result.get("workflow") or "?"),
            path=str(started.get("path") or self.result.get("path") or ""),
            status=str(finished.get("status") or self.result.get("status") or "unfinished"),
            error=finished.get("error", self.result.get("error")),
            inputs=_text(started.get("inputs", self.result.get("inputs", {}))),
            outputs=[(str(k), _text(v)) for k, v in outputs.items()],
            duration=duration,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            started=str(started.get("time")) if started else None,
            steps=sorted(self.steps.values(), key=lambda step: order.key(step.id)),
            notices=self.notices,
            span=span,
            truncated=truncated is not None,
        )

    def _step(self, step_id: str) -> Step:
        return self.steps.setdefault(step_id, Step(step_id))

    def _offset(self, event: Mapping[str, Any]) -> float | None:
        moment = _seconds(event.get("time"))
        if moment is None or self.origin is None:
            return None
        return max(moment - self.origin, 0.0)

    def _turn(self, event: Mapping[str, Any]) -> Round:
        step, item, number = str(event.get("step")), event.get("item"), event.get("round")
        key = (step, item, number)
        if key not in self.turns:
            where = f"item {item} · " if item is not None else ""
            label = f"{where}round {number}" if number else f"{where}tool call"
            self.turns[key] = Round(label)
            self._step(step).turns.append(self.turns[key])
        return self.turns[key]

    def _fold(self, event: Mapping[str, Any]) -> None:
        kind, step_id = event.get("type"), event.get("step")
        if kind in ("notice",) and event.get("message"):
            self.notices.append(str(event["message"]))
        if step_id is None:
            return
        step = self._step(str(step_id))
        if kind == "step_started":
            step.title = event.get("name")
            step.model = event.get("model")
            step.tool = event.get("tool")
            step.kind = event.get("kind")
            step.start = self._offset(event)
        elif kind == "llm_response":
            self._response(self._turn(event), event)
        elif kind == "tool_call":
            self._turn(event).tool_calls.append(
                ToolCall(event.get("id"), str(event.get("name")), _text(event.get("arguments")))
            )
        elif kind == "tool_result":
            calls = self._turn(event).tool_calls
            call = next((c for c in calls if c.id == event.get("id") and c.result is None), None)
            if call is None:  # a result whose call is not in the log (cut off)
                call = ToolCall(event.get("id"), str(event.get("name")), "")
                calls.append(call)
            call.result = _text(event.get("content"))
            call.is_error = bool(event.get("is_error"))
            call.full_result = event.get("full_result")
        elif kind == "agent_notice":
            self._turn(event).notes.append(f"{event.get('kind')}: {_text(event.get('detail'))}")
        elif kind == "step_finished":
            self._finished(step, event)

    @staticmethod
    def _response(turn: Round, event: Mapping[str, Any]) -> None:
        usage = event.get("usage") or {}
        turn.content = event.get("content")
        turn.reasoning = event.get("reasoning")
        turn.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        turn.completion_tokens = int(usage.get("completion_tokens") or 0)
        turn.ttft, turn.tokens_per_second = response_speed(event)

    def _finished(self, step: Step, event: Mapping[str, Any]) -> None:
        usage = event.get("usage") or {}
        step.status = str(event.get("status"))
        step.error = event.get("error")
        step.reason = event.get("reason")
        output = event.get("output")
        if step.kind == "embed":  # numbers nobody reads: how many vectors, how long
            output = vector_summary(output)
        step.output = None if output is None else _text(output)
        step.rounds = int(event.get("rounds") or 0)
        step.tool_call_count = int(event.get("tool_calls") or 0)
        step.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        step.completion_tokens = int(usage.get("completion_tokens") or 0)
        step.duration = event.get("duration")
        step.end = self._offset(event)

    def _from_result(self) -> None:
        """result.json fills in the model of a step that never started (skipped)."""
        for entry in self.result.get("steps") or ():
            if isinstance(entry, Mapping) and entry.get("id") in self.steps:
                step = self.steps[entry["id"]]
                step.model = step.model or entry.get("model")


def _percent(span: float) -> Any:
    """`percent(seconds)`: a position on the time line, for the template."""

    def percent(seconds: float | None) -> str:
        value = 0.0 if seconds is None else min(max(seconds / span * 100, 0.0), 100.0)
        return f"{value:.2f}%"

    return percent


def write_report(run_dir: Path, target: Path) -> Path:
    """Render the run's page into `target` (atomically); returns it."""
    from .runlog import write_atomic

    write_atomic(target, render_report(run_dir))
    return target


__all__ = ["Report", "Step", "build_report", "render_report", "write_report"]
