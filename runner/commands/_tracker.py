"""What a run looks like right now, followed from its events: the start-up phases under way,
the steps running (round, tokens, speed) and, at the end, one summary row per step.

Pure state, no output: the plain view (_console.py) and the live view (_live.py) both read
it, so they always agree on what they show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..runlog import Event
from ..speed import response_speed

SUMMARY_HEADERS = ("step", "model", "status", "rounds", "tool calls", "tokens", "tok/s", "time")


@dataclass
class Running:
    """A step (or one `for_each` item of it) under way."""

    step: str
    item: int | None
    title: str
    model: str | None
    started: float
    round: int = 0
    speed: float | None = None
    """Tokens per second of the latest answer."""

    @property
    def label(self) -> str:
        return self.step if self.item is None else f"{self.step}[{self.item}]"


@dataclass
class StepSummary:
    step: str
    model: str | None = None
    status: str = ""
    rounds: int = 0
    tool_calls: int = 0
    tokens: int = 0
    duration: float = 0.0
    completion_tokens: int = 0
    generating: float = 0.0
    """Seconds spent waiting for answers: tok/s is completion tokens over this."""

    def row(self) -> tuple[str, ...]:
        speed = self.completion_tokens / self.generating if self.generating > 0 else None
        return (
            self.step,
            self.model or "-",
            self.status,
            str(self.rounds),
            str(self.tool_calls),
            str(self.tokens),
            f"{speed:.1f}" if speed else "-",
            f"{self.duration:.1f}s",
        )


@dataclass
class Phase:
    """A start-up phase under way: the model check, or one MCP server starting."""

    phase: str
    name: str | None
    started: float

    @property
    def title(self) -> str:
        return "checking models" if self.phase == "models" else f"starting server {self.name}"


class RunTracker:
    """Follows a run's events; `phases`, `running` and `summary()` say where it stands."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.phases: dict[tuple[str, str | None], Phase] = {}
        self.running: dict[tuple[str, int | None], Running] = {}
        self.steps: dict[str, StepSummary] = {}

    def __call__(self, event: Event) -> None:
        data, key = event.data, (event.step or "", event.item)
        if event.type == "run_started":
            self.order = list(data.get("steps") or ())
        elif event.type == "phase_started":
            self.phases[(data.get("phase", ""), data.get("name"))] = Phase(
                data.get("phase", ""), data.get("name"), event.time
            )
        elif event.type == "phase_finished":
            self.phases.pop((data.get("phase", ""), data.get("name")), None)
        elif event.type == "step_started" and event.step is not None:
            self._nest(event.step, data.get("steps"))
            self._summary(event.step).model = data.get("model") or data.get("tool")
            title = data.get("name") or event.step
            self.running[key] = Running(event.step, None, title, data.get("model"), event.time)
        elif event.type == "item_started" and event.step is not None:
            parent = self.running.get((event.step, None))
            title = parent.title if parent else event.step
            model = parent.model if parent else None
            self.running[key] = Running(event.step, event.item, title, model, event.time)
        elif event.type == "llm_request" and key in self.running:
            self.running[key].round = int(data.get("round") or 0)
        elif event.type == "llm_response":
            self._response(event, key)
        elif event.type == "item_finished":
            self.running.pop(key, None)
        elif event.type == "step_finished" and event.step is not None:
            self._finished(event.step, data)
        elif event.type == "run_finished":
            self.phases.clear()
            self.running.clear()

    def _nest(self, step: str, nested: Any) -> None:
        """A sub-workflow step's own steps (`step/INNER`) take their place right after it."""
        if isinstance(nested, list) and step in self.order:
            at = self.order.index(step) + 1
            self.order[at:at] = [f"{step}/{inner}" for inner in nested]

    def _summary(self, step: str) -> StepSummary:
        return self.steps.setdefault(step, StepSummary(step))

    def _response(self, event: Event, key: tuple[str, int | None]) -> None:
        running = self.running.get(key)
        _, speed = response_speed(event.data)
        if running is not None:
            running.speed = speed
        usage = event.data.get("usage") or {}
        summary = self._summary(key[0])
        completion = int(usage.get("completion_tokens") or 0)
        if speed and completion:
            summary.completion_tokens += completion
            summary.generating += completion / speed

    def _finished(self, step: str, data: Mapping[str, Any]) -> None:
        for key in [key for key in self.running if key[0] == step]:
            del self.running[key]
        summary = self._summary(step)
        usage = data.get("usage") or {}
        summary.status = str(data.get("status") or "")
        summary.rounds = int(data.get("rounds") or 0)
        summary.tool_calls = int(data.get("tool_calls") or 0)
        summary.tokens = int(usage.get("prompt_tokens") or 0) + int(
            usage.get("completion_tokens") or 0
        )
        summary.duration = float(data.get("duration") or 0.0)

    def summary(self) -> list[tuple[str, ...]]:
        """One row per step that finished (SUMMARY_HEADERS), in run order."""
        rank = {step: i for i, step in enumerate(self.order)}
        finished = [s for s in self.steps.values() if s.status]
        finished.sort(key=lambda s: rank.get(s.step, len(rank)))
        return [s.row() for s in finished]
