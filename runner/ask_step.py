"""Ask steps (`ask:`): a question for a person, answered by whoever can answer it.

The engine never talks to a terminal or an MCP client itself. A run's `Answers` say where
an answer comes from, in this order: the values the caller was given for the step
(`--answer STEP=VALUE`), the cassette a replay answers from (a replay never asks), the
caller's `Asker` (the terminal of `lmflow run`, the client of `lmflow serve`), the step's
`default:`. When none can answer, the run is refused before its first step
(`check_answerable`), so nobody waits for a run that would stop half-way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from . import templating
from .errors import ConfigurationError, StepFailedError
from .runlog import StepEmit
from .spec.model import EMPTY, AskStep, AskType, Workflow, thawed, walk_steps
from .spec.schema import did_you_mean

TRUE_WORDS = ("true", "yes", "y", "on", "1")
FALSE_WORDS = ("false", "no", "n", "off", "0")


@dataclass(frozen=True)
class Question:
    """One question as an asker sees it: the rendered text, what an answer may be, the
    default (when `has_default`), and the step (and `for_each` item) that asks."""

    step: str
    text: str
    type: AskType = "string"
    choices: tuple[str, ...] = ()
    default: Any = None
    has_default: bool = False
    item: int | None = None

    @classmethod
    def of(cls, step: AskStep, text: str = "", item: int | None = None) -> Question:
        return cls(
            step.id, text, step.type, step.choices, thawed(step.default), step.has_default, item
        )

    @property
    def allowed(self) -> str:
        """The answers it takes, in words: what an error about a wrong one says."""
        if self.type == "boolean":
            return "true or false (yes/no)"
        if self.type == "enum":
            return "one of " + ", ".join(self.choices)
        return "any text"

    def parse(self, text: str) -> Any:
        """The typed answer a person or `--answer` spelled; ValueError names the allowed
        ones."""
        word = text.strip()
        if self.type == "boolean":
            if word.lower() in TRUE_WORDS:
                return True
            if word.lower() in FALSE_WORDS:
                return False
            raise ValueError(f"{text!r} is not {self.allowed}")
        if self.type == "enum":
            if word in self.choices:
                return word
            raise ValueError(f"{text!r} is not {self.allowed}")
        return text

    def check(self, value: Any) -> Any:
        """A value given already typed (a client's form, the library): the same rules."""
        if isinstance(value, str):
            return self.parse(value)
        if self.type == "boolean" and isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not {self.allowed}")

    def json_schema(self) -> dict[str, Any]:
        """The answer as a JSON Schema property (an MCP elicitation's form field)."""
        schema: dict[str, Any] = {"title": self.step}
        if self.type == "boolean":
            schema["type"] = "boolean"
        else:
            schema["type"] = "string"
        if self.type == "enum":
            schema["enum"] = list(self.choices)
        if self.has_default:
            schema["default"] = self.default
        return schema


class Asker(Protocol):
    """Asks a person: returns the typed answer, or raises `StepFailedError` when they will
    not answer (declined, cancelled, closed their input)."""

    async def __call__(self, question: Question) -> Any: ...


class RecordedAnswers(Protocol):
    """A cassette's answers: the one recorded for this question, `NOT_RECORDED` when none."""

    def recorded_answer(self, question: Question) -> Any: ...


NOT_RECORDED = object()


@dataclass
class Answers:
    """Where one run's answers come from (see the module's docstring)."""

    given: Mapping[str, Any] = field(default_factory=dict)
    """Typed answers by step id (`--answer`), checked by `parse_answers`."""
    asker: Asker | None = None
    recorded: RecordedAnswers | None = None
    """Set when the run replays a cassette: then nobody is asked."""

    async def answer(self, question: Question) -> tuple[Any, str]:
        """The answer and who gave it (`answer`, `cassette`, `asked`, `default`)."""
        if question.step in self.given:
            return self.given[question.step], "answer"
        if self.recorded is not None:
            value = self.recorded.recorded_answer(question)
            if value is not NOT_RECORDED:
                return value, "cassette"
        elif self.asker is not None:
            given = await self.asker(question)
            try:
                return question.check(given), "asked"
            except ValueError as error:
                raise StepFailedError(
                    f"the answer to step {question.step!r} is wrong: {error}",
                    hint=f"answer {question.allowed}",
                ) from None
        if question.has_default:
            return question.default, "default"
        raise StepFailedError(
            f"nobody can answer step {question.step!r}"
            + (": the cassette holds no answer to it" if self.recorded is not None else ""),
            hint=answer_hint(question.step),
        )

    def check_answerable(self, workflow: Workflow) -> None:
        """Refuse a run (exit 2) whose questions nobody could answer: no asker, no value
        given, no default (a replay's cassette answers when its step comes)."""
        if self.asker is not None or self.recorded is not None:
            return
        missing = unanswered(workflow, self.given)
        if missing:
            raise ConfigurationError(
                f"{_steps(missing)} {'asks' if len(missing) == 1 else 'ask'} a question and "
                "nobody can answer: there is no terminal, no --answer and no default",
                hint=answer_hint(missing[0].id),
            )


def answer_hint(step: str) -> str:
    return f"pass --answer {step}=VALUE or run it in a terminal (or give the step a `default:`)"


def ask_steps(workflow: Workflow) -> list[AskStep]:
    """The ask steps, loop bodies included (an answer by id answers every iteration)."""
    return [step for _, step in walk_steps(workflow.steps) if isinstance(step, AskStep)]


def unanswered(workflow: Workflow, given: Mapping[str, Any] = EMPTY) -> list[AskStep]:
    """The ask steps without a default and without a given answer: what a run that cannot
    ask anyone (a batch, a pipe) cannot run."""
    return [s for s in ask_steps(workflow) if not s.has_default and s.id not in given]


def _steps(steps: Sequence[AskStep]) -> str:
    names = ", ".join(repr(step.id) for step in steps)
    return f"step {names}" if len(steps) == 1 else f"steps {names}"


def parse_answers(workflow: Workflow, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed answers by step id from `--answer STEP=VALUE` strings (or typed values from the
    library); an unknown step or a value its type does not take is exit 2, naming what would
    be right."""
    by_id = {step.id: step for step in ask_steps(workflow)}
    answers: dict[str, Any] = {}
    for step_id, value in raw.items():
        step = by_id.get(step_id)
        if step is None:
            known = ", ".join(by_id) or "none"
            raise ConfigurationError(
                f"--answer {step_id}=...: the workflow has no ask step {step_id!r}",
                hint=did_you_mean(step_id, list(by_id)) or f"its ask steps: {known}",
            )
        question = Question.of(step)
        try:
            answers[step_id] = question.check(value)
        except ValueError as error:
            raise ConfigurationError(
                f"--answer {step_id}={value}: {error}",
                hint=f"step {step_id!r} takes {question.allowed}",
            ) from None
    return answers


async def run_step(
    step: AskStep,
    context: Mapping[str, Any],
    *,
    answers: Answers,
    item: int | None,
    emit: StepEmit,
) -> Any:
    """Ask the step's question and return the answer; the `ask_answered` event keeps both,
    and who answered. A `timeout:` bounds the wait for a person."""
    question = Question.of(step, templating.render_text(step.ask, context), item)
    try:
        with anyio.fail_after(step.timeout):
            value, by = await answers.answer(question)
    except TimeoutError:
        raise StepFailedError(
            f"no answer within {step.timeout:g} s",
            hint="answer sooner, raise the step's `timeout:`, or pass --answer",
        ) from None
    emit(
        "ask_answered",
        {"question": question.text, "answer_type": step.type, "answer": value, "by": by},
    )
    return value
