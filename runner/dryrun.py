"""`lmflow run --dry-run`: what each step would send, rendered with the real inputs, without
asking a model, starting a server or writing a run log.

Values that only exist once steps have run (a step's output or status, a `for_each` item)
are stand-ins that print as `<steps.survey.output.modules>`; a template that cannot work on
a stand-in (arithmetic on an output, say) shows why instead of its text.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import templating
from .command_step import command_line
from .embed_step import texts_of
from .errors import StepFailedError
from .server_prompts import described
from .spec.model import (
    AskStep,
    CommandStep,
    EmbedStep,
    LoopStep,
    Step,
    ToolStep,
    Workflow,
    WorkflowStep,
    thawed,
)


class Placeholder:
    """A value not known before the run: any attribute or item of it is another one, and
    it prints as its own path."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{self.path}.{name}")

    def __getitem__(self, key: Any) -> Placeholder:
        return Placeholder(f"{self.path}[{key!r}]")

    def __iter__(self) -> Iterator[Placeholder]:
        yield Placeholder(f"{self.path}[0]")

    def __len__(self) -> int:
        return 1

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"<{self.path}>"

    __repr__ = __str__


@dataclass(frozen=True)
class DryStep:
    """One step as the run would start it. `error` replaces a field that cannot render."""

    id: str
    title: str
    condition: str | None
    for_each: str | None
    system: str | None = None
    prompt: str | None = None
    arguments: str | None = None
    error: str | None = None
    question: str | None = None


def dry_run(
    workflow: Workflow, context: Mapping[str, Any], redact: Callable[[str], str]
) -> list[DryStep]:
    """Every step in run order, its fields rendered over `context` (a run's base context,
    inputs checked) with stand-ins for what steps and items produce, then `redact`ed: a
    secret read through `env` is masked as in a run log."""
    known = {
        **context,
        "steps": _stand_ins(workflow.steps),
        "item": Placeholder("item"),
        "loop": {"index": 1, "index0": 0, "first": True, "last": False, "length": 1},
    }
    return list(_in_order(workflow, known, redact, ""))


def _stand_ins(steps: Iterable[Step]) -> dict[str, Any]:
    return {
        step.id: {
            "output": Placeholder(f"steps.{step.id}.output"),
            "status": Placeholder(f"steps.{step.id}.status"),
        }
        for step in steps
    }


def _in_order(
    workflow: Workflow, context: Mapping[str, Any], redact: Callable[[str], str], scope: str
) -> Iterator[DryStep]:
    """The steps in run order; after a loop step, its nested steps as its first iteration
    would start them (`LOOP[1]/INNER`)."""
    by_id = {step.id: step for step in workflow.steps}
    for step_id in workflow.plan.order():
        step = by_id[step_id]
        shown = _step(workflow, step, context, redact)
        yield replace(shown, id=scope + shown.id)
        if isinstance(step, LoopStep):
            inner = {
                **context,
                "steps": {**context["steps"], **_stand_ins(step.loop.steps)},
                "loop": {**context["loop"], "previous": {}},
            }
            yield from _in_order(workflow.bodies[step.id], inner, redact, f"{scope}{step.id}[1]/")


def _step(
    workflow: Workflow,
    step: Step,
    context: Mapping[str, Any],
    redact: Callable[[str], str],
) -> DryStep:
    condition = step.if_ if isinstance(step.if_, str) else None
    for_each = step.for_each
    if for_each is not None and not isinstance(for_each, str):
        for_each = json.dumps(thawed(for_each), ensure_ascii=False, default=str)
    if isinstance(step, ToolStep):
        title = f"tool {step.tool}"
    elif isinstance(step, CommandStep):
        title = "command" + (f"  (cwd: {step.cwd})" if step.cwd else "")
    elif isinstance(step, LoopStep):
        until = step.loop.until
        return DryStep(step.id, f"loop  (max: {step.loop.max}, until: {until})", condition, None)
    elif isinstance(step, WorkflowStep):
        title = f"workflow {step.workflow}"
    elif isinstance(step, AskStep):
        title = f"ask ({step.type}" + (f": {', '.join(step.choices)})" if step.choices else ")")
    elif isinstance(step, EmbedStep):
        title = f"embed with {workflow.step_model(step)}"
    else:
        title = f"model {workflow.step_model(step)}"
        title += f"  (mcp: {', '.join(step.mcp)})" if step.mcp else ""
    shown = DryStep(step.id, title, condition, for_each)
    try:
        if isinstance(step, (ToolStep, WorkflowStep)):  # a tool's arguments; a workflow's inputs
            arguments = templating.render_value(thawed(step.with_), context)
            text = json.dumps(arguments, ensure_ascii=False, default=str)
            return replace(shown, arguments=redact(text))
        if isinstance(step, CommandStep):
            return replace(shown, arguments=redact(shlex.join(command_line(step, context))))
        if isinstance(step, AskStep):
            return replace(shown, question=redact(templating.render_text(step.ask, context)))
        if isinstance(step, EmbedStep):
            text = json.dumps(texts_of(step, context), ensure_ascii=False, default=str)
            return replace(shown, arguments=redact(text))
        system = templating.render_text(step.system, context) if step.system else None
        prompt = templating.render_text(step.prompt or "", context)
        if step.system_from is not None:
            system = described(step.system_from, context)
        if step.prompt_from is not None:
            prompt = described(step.prompt_from, context)
        return replace(
            shown, system=redact(system) if system is not None else None, prompt=redact(prompt)
        )
    except (templating.TemplateError, StepFailedError) as error:
        return replace(shown, error=redact(f"cannot render before the run: {error}"))
