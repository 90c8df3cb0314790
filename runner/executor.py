"""Runs a Workflow: inputs, step order, conditions, tool and model steps, outputs, failures.

The executor owns the workflow semantics and nothing else: it gets a chat model and a tool
provider from its caller (live LM Studio and MCP servers, or a cassette), so the same code
runs a real run, a replay and a test.
"""

from __future__ import annotations

import asyncio
import graphlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup

from . import ask_step, command_step, embed_step, templating
from .agent import AgentLimits, AgentTally, AgentTask, run_agent
from .chat import ChatModel, Message, Toolbox, ToolResult, Usage, sees_images
from .errors import (
    ConfigurationError,
    InputError,
    LmflowError,
    MCPServerError,
    StepFailedError,
    ToolExecutionError,
)
from .limits import holding
from .results import capped, full_result_fields, image_fields
from .resume import Reusable, image_digests, step_fingerprint
from .resume import item_fingerprint as fingerprint_of_item
from .runlog import DIRECT_CALL_ID, RunLog, Scope, SecretEnv, current_scope
from .server_prompts import step_prompts
from .spec.load import MAX_NESTING, TOO_DEEP_HINT, nesting, too_deep_message
from .spec.model import (
    AgentStep,
    AllowList,
    AskStep,
    CommandStep,
    EmbedStep,
    HttpServer,
    LoopStep,
    McpServer,
    StdioServer,
    Step,
    ToolStep,
    Workflow,
    WorkflowStep,
    thawed,
)
from .step_images import step_images

StepStatus = Literal["succeeded", "failed", "skipped", "interrupted"]
STOPPED = "the run was stopped while it ran"
LOOP_ITERATIONS = "iterations"
"""The field of a loop step's output that counts its iterations (beside its steps' ids)."""
RunStatus = Literal["succeeded", "failed", "interrupted", "error"]


class ToolProvider(Protocol):
    """Where tools come from: live MCP sessions, or a cassette."""

    def toolbox(
        self,
        servers: Sequence[str],
        allow: AllowList,
        limits: Mapping[str, int] | None = None,
    ) -> Toolbox: ...

    async def call_tool(
        self, server: str, tool: str, arguments: Mapping[str, Any]
    ) -> ToolResult: ...


# --- inputs ------------------------------------------------------------------------------


def coerce_inputs(workflow: Workflow, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed input values from `-i key=value` strings or an inputs file.

    Strings from the command line are parsed per declared type (`3` for an integer, `true`
    for a boolean, JSON for arrays and objects); values from a YAML/JSON file keep their
    type. Every problem is reported at once, naming the input.
    """
    from jsonschema import Draft202012Validator

    errors: list[str] = []
    unknown = sorted(set(raw) - set(workflow.inputs))
    for name in unknown:
        declared = ", ".join(workflow.inputs) or "none"
        errors.append(f"unknown input {name!r} (declared: {declared})")
    values: dict[str, Any] = {}
    for name, spec in workflow.inputs.items():
        if name in raw:
            try:
                value = _parse_input(spec.type, raw[name])
            except ValueError as error:
                errors.append(f"input {name!r}: {error}")
                continue
        elif spec.required:  # `required: true` wins over a default (validate warns of it)
            errors.append(
                f"input {name!r} is required ({spec.type}"
                + (f": {spec.description}" if spec.description else "")
                + ")"
            )
            continue
        else:
            value = thawed(spec.default) if spec.has_default else None
        if nesting(value) > MAX_NESTING:
            errors.append(f"input {name!r}: {too_deep_message('data')}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            errors.append(f"input {name!r}: {value} is not a number JSON can carry")
            continue
        if value is not None:
            for violation in Draft202012Validator(spec.json_schema()).iter_errors(value):
                errors.append(f"input {name!r}: {violation.message}")
        values[name] = value
    if errors:
        raise InputError("; ".join(errors), hint="pass inputs as -i name=value or --inputs FILE")
    return values


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
"""JSON's number grammar, ASCII digits only: `1_0`, `٣`, `nan` and `inf` are not numbers."""


def _parse_input(kind: str, value: Any) -> Any:
    if not isinstance(value, str) or kind == "string":
        if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    if kind == "integer":
        if not _INTEGER.fullmatch(text):
            raise ValueError(f"{value!r} is not an integer")
        return int(text)
    if kind == "number":
        if not _NUMBER.fullmatch(text):
            raise ValueError(f"{value!r} is not a number")
        return _finite(text)
    if kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean (use true or false)")
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_not_a_number)
    except json.JSONDecodeError as error:
        raise ValueError(f"{value!r} is not JSON for an {kind}: {error.msg}") from None
    except RecursionError:
        raise ValueError(too_deep_message("JSON")) from None


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a number")
    return number


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON can carry")


# --- results ------------------------------------------------------------------------------


@dataclass
class StepRecord:
    id: str
    status: StepStatus
    output: Any = None
    error: str | None = None
    reason: str | None = None
    model: str | None = None
    rounds: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    duration: float = 0.0
    fingerprint: str | None = None
    """What the result depends on, hashed (resume.py): how a later run can reuse it."""
    reused_from: str | None = None
    """The id of the run whose result this is, when it was reused (`--resume`)."""
    hint: str | None = None
    """How to fix what failed the step, when the error says (shown with the failure)."""
    conversation: tuple[Message, ...] | None = None
    """A model step's whole conversation, kept while a later step may `continue:` it."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "reason": self.reason,
            "model": self.model,
            "rounds": self.rounds,
            "tool_calls": self.tool_calls,
            "usage": self.usage.as_dict(),
            "duration": round(self.duration, 3),
        }

    def __getitem__(self, key: str) -> Any:
        """`step["output"]`: the dict access the pytest plugin's results had before they
        became attributes, kept so that older tests still pass."""
        return self.as_dict()[key]


@dataclass
class RunResult:
    run_id: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0

    @property
    def usage(self) -> Usage:
        total = Usage()
        for step in self.steps:
            total = total + step.usage
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "error": self.error,
            "duration": round(self.duration, 3),
            "usage": self.usage.as_dict(),
            "steps": [s.as_dict() for s in self.steps],
        }


# --- context ------------------------------------------------------------------------------


def base_context(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    env: SecretEnv,
    run_id: str,
    run_dir: Path | None,
    started_at: str,
) -> dict[str, Any]:
    """What templates can read before any step ran."""
    return {
        "inputs": dict(inputs),
        "env": env,
        "workflow": {
            "name": workflow.name,
            "description": workflow.description,
            "path": str(workflow.path),
            "dir": str(workflow.path.parent.resolve()),
        },
        "run": {"id": run_id, "dir": str(run_dir) if run_dir else "", "started_at": started_at},
        "steps": {},
    }


def nested_context(
    workflow: Workflow, inputs: Mapping[str, Any], including: Mapping[str, Any]
) -> dict[str, Any]:
    """What the templates of an included workflow read before its first step: its own
    inputs and `workflow`, the run's `env` and `run`."""
    return {
        **base_context(workflow, inputs, including["env"], "", None, ""),
        "run": including["run"],
    }


def servers_in_use(workflow: Workflow) -> list[str]:
    """Declared servers that some step lists or calls, in declaration order."""
    used = {name for step in workflow.steps for name in step.servers}
    return [name for name in workflow.mcp_servers if name in used]


def render_servers(
    workflow: Workflow, names: Sequence[str], context: Mapping[str, Any]
) -> dict[str, McpServer]:
    """Server settings with their templates filled in (inputs and env only)."""
    rendered: dict[str, McpServer] = {}
    for name in names:
        server = workflow.mcp_servers[name]
        text = partial(_render_setting, name, context=context)
        if isinstance(server, StdioServer):
            rendered[name] = replace(
                server,
                command=text("command", server.command),
                args=tuple(text(f"args[{i}]", a) for i, a in enumerate(server.args)),
                env={k: text(f"env.{k}", v) for k, v in server.env.items()},
                cwd=text("cwd", server.cwd) if server.cwd else None,
                roots=_render_roots(server.roots, text),
            )
        elif isinstance(server, HttpServer):
            rendered[name] = replace(
                server,
                url=text("url", server.url),
                headers={k: text(f"headers.{k}", v) for k, v in server.headers.items()},
                roots=_render_roots(server.roots, text),
            )
    return rendered


def _render_roots(roots: tuple[str, ...], text: Callable[[str, str], str]) -> tuple[str, ...]:
    return tuple(text(f"roots[{i}]", root) for i, root in enumerate(roots))


def _render_setting(server: str, field: str, value: str, *, context: Mapping[str, Any]) -> str:
    """One server setting. An unset environment variable is the environment not being ready
    (exit 3); any other template failure is the workflow's (exit 2). Both name the server,
    the field and the cause."""
    try:
        return templating.render_text(value, context)
    except templating.TemplateError as error:
        where = f"MCP server {server!r} setting {field}"
        if isinstance(error, templating.UndefinedError):
            unset = sorted(
                str(ref.path[0])
                for ref in templating.references(templating.parse_template(value))
                if ref.root == "env" and ref.path and str(ref.path[0]) not in context["env"]
            )
            if unset:
                raise MCPServerError(
                    f"{where} reads environment variable {unset[0]}, which is not set",
                    hint=f"set it before the run: export {unset[0]}=...",
                ) from None
        raise ConfigurationError(f"{where}: {error}") from None


def _json_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Rendered tool arguments as plain JSON data, checked here rather than deep in the MCP
    client: a value JSON cannot carry (a range, a set, NaN) fails the step, naming it."""
    if nesting(arguments) > MAX_NESTING:
        raise StepFailedError(f"with: {too_deep_message('data')}", hint=TOO_DEEP_HINT)
    return {key: _json_value(value, f"with.{key}") for key, value in arguments.items()}


def _json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return str(value)  # a Markup or other str subclass becomes the plain text
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _json_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise StepFailedError(
        f"{where} is {_describe(value)}, which is not JSON data",
        hint="make it a list, string or number in the template, e.g. `{{ range(3) | list }}`",
    )


def _describe(value: Any) -> str:
    return str(value) if isinstance(value, float) else f"a {type(value).__name__} value"


# --- the run ------------------------------------------------------------------------------


@dataclass
class _Schedule:
    """The scheduling state of one run: what may start next, the task group steps run in,
    and the failed step that stops the run (`fail_fast`)."""

    sorter: graphlib.TopologicalSorter[str]
    group: TaskGroup
    stopped_by: str | None = None


class Executor:
    """Runs the steps of one workflow with a given model and tool provider.

    A step starts as soon as every step it waits for has finished, within the run's
    concurrency limit. Each step task reads a snapshot of the results that existed when it
    started; when it ends, it keeps its record and starts the steps that waited for it in
    code that never awaits (`_start_ready`), so one piece of code at a time writes the
    results and concurrent steps share no mutable state.
    """

    def __init__(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        *,
        chat: ChatModel,
        tools: ToolProvider | None,
        log: RunLog,
        context: dict[str, Any],
        reuse: Reusable | None = None,
        scope: str = "",
        slots: anyio.CapacityLimiter | None = None,
        answers: ask_step.Answers | None = None,
    ) -> None:
        self.workflow = workflow
        self.reuse = reuse
        self.scope = scope
        """Where these steps run inside another step: `PARENT` for a sub-workflow's steps,
        `LOOP[N]` for an iteration's, composed (`a/b[2]`); "" at the top."""
        self.answers = answers or ask_step.Answers()
        """Where `ask:` steps get their answers (none given: each step's default)."""
        self.inputs = dict(inputs)
        self.chat = chat
        self.tools = tools
        self.log = log
        self.context = context
        self.steps = {step.id: step for step in workflow.steps}
        self.waits = workflow.plan.dependencies()
        self.order = {step_id: rank for rank, step_id in enumerate(workflow.plan.order())}
        self.slots = slots or anyio.CapacityLimiter(workflow.defaults.concurrency)
        """The run's one concurrency limit, shared with nested executors."""
        self.result = RunResult(log.run_id, workflow.name, "succeeded", self.inputs)
        self.failed_step: str | None = None
        """The failed step the run's error names: the first in run order, not in time."""
        self.continued = frozenset(
            step.continue_
            for step in workflow.steps
            if isinstance(step, AgentStep) and step.continue_ is not None
        )
        """The steps whose conversation a later step continues: theirs are kept."""
        self.conversations: dict[str, tuple[Message, ...]] = {}
        """Those conversations, by step id, once the step succeeded (written in `_record`)."""

    # --- nesting: the one place where a step's id gets its scope ---------------------------

    def _scoped(self, step_id: str) -> str:
        """A step's id as everything outside the executor sees it (events, StepRecords in the
        log, cassette scopes): `SCOPE/ID` for nested steps, so `a/b` is step b of
        sub-workflow a and `fix[2]/b` step b in loop fix's second iteration."""
        return f"{self.scope}/{step_id}" if self.scope else step_id

    def _nested(
        self, step: Step, scope: str, inputs: Mapping[str, Any], context: dict[str, Any]
    ) -> Executor:
        """An executor for a step's nested steps (`workflow.bodies`), under `scope`, sharing
        the run's model, tools, log, resume and concurrency slots."""
        return Executor(
            self.workflow.bodies[step.id],
            inputs,
            chat=self.chat,
            tools=self.tools,
            log=self.log,
            context=context,
            reuse=self.reuse,
            scope=scope,
            slots=self.slots,
            answers=self.answers,
        )

    async def run(self) -> RunResult:
        """Run every step; `self.result` holds what finished so far, also when interrupted.
        The run's own start and end events belong to its caller (runtime), which knows how
        the run ended as a whole."""
        started = time.monotonic()
        result = self.result
        sorter = graphlib.TopologicalSorter(self.waits)
        try:
            sorter.prepare()
        except graphlib.CycleError as error:  # validation rejects cycles; a hand-built one
            raise StepFailedError(
                "steps wait for each other: " + ", ".join(error.args[1])
            ) from None
        try:
            async with anyio.create_task_group() as group:
                self._start_ready(_Schedule(sorter, group))
            result.outputs = self._outputs(result)
        finally:
            result.steps.sort(key=lambda r: self.order[r.id])
            result.duration = time.monotonic() - started
        return result

    def _start_ready(self, schedule: _Schedule) -> None:
        """Start every step whose dependencies have finished, in run order; once the run is
        stopping (fail_fast), skip them instead. Called at the start and whenever a step
        ends, never across an await: one call at a time writes the results."""
        while ready := sorted(schedule.sorter.get_ready(), key=self.order.__getitem__):
            for step_id in ready:
                step = self.steps[step_id]
                if schedule.stopped_by is None:
                    schedule.group.start_soon(self._run_step, step, self._snapshot(), schedule)
                    continue
                reason = f"the run stopped after step {schedule.stopped_by!r} failed"
                record = StepRecord(step.id, "skipped", reason=reason)
                self._finish(step, record)
                self._record(step, record)
                schedule.sorter.done(step_id)

    async def _run_step(self, step: Step, context: dict[str, Any], schedule: _Schedule) -> None:
        """One step's task: its record is kept and the steps that waited for it start."""
        current_scope.set(Scope(self._scoped(step.id)))
        record = await self._step_record(step, context)
        self._finish(step, record)
        self._record(step, record)
        schedule.sorter.done(step.id)
        if self.result.status == "failed" and self.workflow.defaults.fail_fast:
            schedule.stopped_by = schedule.stopped_by or step.id
        self._start_ready(schedule)

    def _snapshot(self) -> dict[str, Any]:
        """The template context as it is now: a step reads it, never the live one."""
        return {**self.context, "steps": dict(self.context["steps"])}

    def _record(self, step: Step, record: StepRecord) -> None:
        """Keep a finished step's record (the scheduler's task, one step at a time)."""
        self.context["steps"][step.id] = {"output": record.output, "status": record.status}
        self.result.steps.append(record)
        if record.status == "succeeded" and record.conversation is not None:
            self.conversations[step.id] = record.conversation
        if record.status != "failed" or step.continue_on_error:
            return
        self.result.status = "failed"
        if self.failed_step is None or self.order[step.id] < self.order[self.failed_step]:
            self.failed_step = step.id
            self.result.error = f"step {step.id!r} failed: {record.error}"

    def _outputs(self, result: RunResult) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for name, value in self.workflow.outputs.items():
            try:
                outputs[name] = templating.render_value(thawed(value), self.context)
            except templating.TemplateError as error:
                outputs[name] = None
                if result.status == "succeeded":
                    result.status = "failed"
                    result.error = f"output {name!r}: {error}"
        return outputs

    def _skip_reason(self, step: Step, context: Mapping[str, Any]) -> str | None:
        """Why a step does not run: a failed or skipped dependency, or a false `if:`."""
        statuses = context["steps"]
        if step.if_ is None:
            for dep in sorted(self.waits[step.id]):
                status = statuses.get(dep, {}).get("status")
                if status != "succeeded":
                    return f"step {dep!r} {status}"
            return None
        if not templating.evaluate(step.if_, context):
            return f"condition is false: {step.if_}"
        return None

    async def _step_record(self, step: Step, context: dict[str, Any]) -> StepRecord:
        model = self.workflow.step_model(step)
        try:
            reason = self._skip_reason(step, context)
        except templating.TemplateError as error:
            return StepRecord(step.id, "failed", error=f"if: {error}", model=model)
        if reason is not None:
            return StepRecord(step.id, "skipped", reason=reason, model=model)
        fingerprint = step_fingerprint(self.workflow, step, context, scope=self.scope)
        # a for_each's items and a sub-workflow's steps are reused one by one instead, so a
        # resumed run logs their fingerprints again for the run that resumes it
        whole = step.for_each is None and not isinstance(step, WorkflowStep)
        if whole and (reused := self._reused(step.id, fingerprint)):
            return reused
        self.log.emit(
            "step_started",
            self._scoped(step.id),
            name=self._title(step, context),
            model=model,
            kind=step.kind,
            tool=step.tool if isinstance(step, ToolStep) else None,
            **self._nested_order(step),
            **_continues(step),
        )
        started = time.monotonic()
        try:
            if step.for_each is not None:
                record = await self._for_each(step, context, fingerprint)
            elif isinstance(step, WorkflowStep | LoopStep):  # their nested steps take slots
                record = await self._attempt(step, context, None)
            else:
                async with holding(self.slots):
                    record = await self._attempt(step, context, None)
        except anyio.get_cancelled_exc_class():
            # The run is stopping (Ctrl-C, a signal, a cancelled caller): a started step
            # still gets its end, so every `step_started` in the log has one.
            duration = time.monotonic() - started
            self._stopped(
                step,
                StepRecord(step.id, "interrupted", reason=STOPPED, model=model, duration=duration),
            )
            raise
        record.duration = time.monotonic() - started
        record.fingerprint = fingerprint
        return record

    def _reused(self, step: str, fingerprint: str) -> StepRecord | None:
        """The earlier run's result with this fingerprint, when resuming and it has one."""
        if self.reuse is None or fingerprint not in self.reuse.outputs:
            return None
        conversation = self.reuse.conversations.get(fingerprint)
        if step in self.continued and conversation is None:
            return None  # a later step continues it: run it again for its conversation
        return StepRecord(
            step,
            "succeeded",
            output=self.reuse.outputs[fingerprint],
            fingerprint=fingerprint,
            reused_from=self.reuse.run_id,
            conversation=conversation,
        )

    async def _attempt(self, step: Step, context: dict[str, Any], item: int | None) -> StepRecord:
        """Run the step's work once (for the step, or one of its items); errors become a
        failed record."""
        model = self.workflow.step_model(step)
        try:
            if isinstance(step, ToolStep):
                return await self._tool_step(step, context, item)
            if isinstance(step, CommandStep):
                return await self._command_step(step, context, item)
            if isinstance(step, WorkflowStep):
                return await self._workflow_step(step, context)
            if isinstance(step, LoopStep):
                return await self._loop_step(step, context)
            if isinstance(step, AskStep):
                return await self._ask_step(step, context, item)
            if isinstance(step, EmbedStep):
                return await self._embed_step(step, context, item)
            return await self._agent_step(step, context, item)
        except LmflowError as error:
            return StepRecord(step.id, "failed", error=error.message, model=model, hint=error.hint)
        except templating.TemplateError as error:
            return StepRecord(step.id, "failed", error=f"template: {error}", model=model)

    async def _for_each(self, step: Step, context: dict[str, Any], fingerprint: str) -> StepRecord:
        """The step once per item, at most `concurrency` at a time; the output is the list
        of the items' outputs in input order."""
        model = self.workflow.step_model(step)
        try:
            items = templating.render_value(thawed(step.for_each), context)
        except templating.TemplateError as error:
            return StepRecord(step.id, "failed", error=f"for_each: {error}", model=model)
        if not isinstance(items, list):
            return StepRecord(
                step.id,
                "failed",
                error=f"for_each gave {type(items).__name__}, not a list: {_brief(items)}",
                model=model,
            )
        limit = anyio.CapacityLimiter(step.concurrency or self.workflow.defaults.concurrency)
        records: list[StepRecord | None] = [None] * len(items)

        async def run_item(index: int, value: Any) -> None:
            current_scope.set(Scope(self._scoped(step.id), index))
            loop = {
                "index": index + 1,
                "index0": index,
                "first": index == 0,
                "last": index == len(items) - 1,
                "length": len(items),
            }
            item_context = {**context, "item": value, "loop": loop}
            images = image_digests(self.workflow, step, item_context)
            item_fingerprint = fingerprint_of_item(fingerprint, index, value, images)
            record = self._reused(step.id, item_fingerprint)
            if record is None:
                async with holding(limit), holding(self.slots):
                    self.log.emit("item_started", self._scoped(step.id), item=index, value=value)
                    try:
                        record = await self._attempt(step, item_context, index)
                    except anyio.get_cancelled_exc_class():
                        self._item_finished(index, StepRecord(step.id, "interrupted"), None)
                        raise
            records[index] = record
            self._item_finished(index, record, item_fingerprint)

        async with anyio.create_task_group() as group:
            for index, value in enumerate(items):
                group.start_soon(run_item, index, value)
        done = [r for r in records if r is not None]
        failed = [i for i, r in enumerate(done) if r.status == "failed"]
        total = StepRecord(
            step.id,
            "failed" if failed else "succeeded",
            output=[r.output for r in done],
            model=model,
            rounds=sum(r.rounds for r in done),
            tool_calls=sum(r.tool_calls for r in done),
            usage=sum((r.usage for r in done), Usage()),
        )
        if failed:
            total.error = f"item(s) {', '.join(map(str, failed))} of {len(items)} failed: " + (
                done[failed[0]].error or ""
            )
            total.hint = done[failed[0]].hint
            if step.continue_on_error:  # the items that succeeded are the step's output
                total.status = "succeeded"
        return total

    def _title(self, step: Step, context: Mapping[str, Any]) -> str | None:
        """The step's `name:` with its templates filled in (as written if they cannot be)."""
        if step.name is None:
            return None
        try:
            return templating.render_text(step.name, context)
        except templating.TemplateError:
            return step.name

    def _item_finished(self, index: int, record: StepRecord, fingerprint: str | None) -> None:
        self.log.emit(
            "item_finished",
            self._scoped(record.id),
            item=index,
            status=record.status,
            output=record.output,
            error=record.error,
            fingerprint=fingerprint,
            **_reused_from(record),
        )

    def _stopped(self, step: Step, record: StepRecord) -> None:
        """End a step the run's stop cut short: told and kept like any other."""
        self._finish(step, record)
        self._record(step, record)

    def _finish(self, step: Step, record: StepRecord) -> None:
        self.log.emit(
            "step_finished",
            self._scoped(step.id),
            status=record.status,
            output=record.output,
            error=record.error,
            reason=record.reason,
            rounds=record.rounds,
            tool_calls=record.tool_calls,
            duration=round(record.duration, 3),
            usage=record.usage.as_dict(),
            fingerprint=record.fingerprint,
            **_reused_from(record),
            **_hint(record),
            **self._conversation(step, record),
        )

    def _conversation(self, step: Step, record: StepRecord) -> dict[str, Any]:
        """The `conversation` field of a continued step's `step_finished`: what `--resume`
        hands the step that continues it when this one is reused (absent otherwise)."""
        if step.id not in self.continued or record.conversation is None:
            return {}
        return {"conversation": [dict(message) for message in record.conversation]}

    def _result_limits(self, step: AgentStep) -> dict[str, int]:
        """Result characters the model gets, per server: the step's setting overrides each
        server's own."""
        servers = self.workflow.mcp_servers
        if step.max_result_chars is not None:
            return dict.fromkeys(step.mcp, step.max_result_chars)
        return {name: servers[name].max_result_chars for name in step.mcp}

    def _timeout(self, step: Step) -> float | None:
        return step.timeout if step.timeout is not None else self.workflow.defaults.timeout

    async def _tool_step(
        self, step: ToolStep, context: Mapping[str, Any], item: int | None
    ) -> StepRecord:
        assert self.tools is not None
        arguments = _json_arguments(templating.render_value(thawed(step.with_), context))
        self.log.emit(
            "tool_call",
            self._scoped(step.id),
            item=item,
            round=0,
            id=DIRECT_CALL_ID,
            name=step.tool,
            arguments=arguments,
        )
        try:
            outcome = await asyncio.wait_for(
                self.tools.call_tool(step.tool_server, step.tool_name, arguments),
                self._timeout(step),
            )
        except asyncio.TimeoutError:
            raise StepFailedError(
                f"tool {step.tool} did not answer within {self._timeout(step)} s"
            ) from None
        # No model reads a direct call's result: the step output is all of it. The event
        # shows what a model would have been given, and points to the whole.
        shown = capped(outcome, self.workflow.mcp_servers[step.tool_server].max_result_chars)
        self.log.emit(
            "tool_result",
            self._scoped(step.id),
            item=item,
            round=0,
            id=DIRECT_CALL_ID,
            name=step.tool,
            is_error=outcome.is_error,
            content=shown.text,
            **full_result_fields(shown.full_text),
            **image_fields(outcome.images),
        )
        if outcome.is_error:
            raise ToolExecutionError(f"tool {step.tool} failed: {outcome.text}")
        output = outcome.structured if outcome.structured is not None else outcome.text
        return StepRecord(step.id, "succeeded", output=output, tool_calls=1)

    async def _command_step(
        self, step: CommandStep, context: Mapping[str, Any], item: int | None
    ) -> StepRecord:
        output, error = await command_step.run_step(
            step,
            context,
            base_dir=self.workflow.path.resolve().parent,
            timeout=self._timeout(step),
            emit=self.log.for_step(self._scoped(step.id), item),
        )
        status: StepStatus = "failed" if error else "succeeded"
        return StepRecord(step.id, status, output=output, error=error)

    async def _loop_step(self, step: LoopStep, context: Mapping[str, Any]) -> StepRecord:
        """The nested steps again and again, each iteration a run of a nested Executor over
        them (scope `LOOP[N]`), until `until:` holds or `max:` iterations ran."""
        loop = step.loop
        tally = StepRecord(step.id, "succeeded")
        previous: dict[str, Any] = {}
        with anyio.move_on_after(step.timeout if step.timeout is not None else math.inf) as timer:
            for index in range(1, loop.max + 1):
                inner = self._nested(
                    step,
                    f"{self._scoped(step.id)}[{index}]",
                    self.inputs,
                    {
                        **context,
                        "steps": dict(context["steps"]),
                        "loop": {"index": index, "previous": previous},
                    },
                )
                result = await inner.run()
                tally.rounds += sum(r.rounds for r in result.steps)
                tally.tool_calls += sum(r.tool_calls for r in result.steps)
                tally.usage = sum((r.usage for r in result.steps), tally.usage)
                tally.output = {
                    **{r.id: r.output for r in result.steps},
                    LOOP_ITERATIONS: index,
                }
                try:
                    done = result.status == "failed" or templating.evaluate(
                        loop.until, inner.context
                    )
                except templating.TemplateError as error:
                    raise StepFailedError(f"until: {error}") from None
                self.log.emit(
                    "iteration_finished",
                    self._scoped(step.id),
                    iteration=index,
                    status=result.status,
                    until=bool(done) if result.status != "failed" else None,
                )
                if result.status == "failed":
                    tally.status, tally.error = "failed", f"iteration {index}: {result.error}"
                    tally.hint = next((r.hint for r in result.steps if r.hint), None)
                    return tally
                if done:
                    return tally
                previous = {r.id: {"output": r.output, "status": r.status} for r in result.steps}
        if timer.cancelled_caught:
            raise StepFailedError(f"loop did not finish within {step.timeout} s")
        if loop.on_max == "fail":
            tally.status = "failed"
            tally.error = f"reached max: {loop.max} iterations and until: is still false"
            tally.hint = (
                "raise `max:`, or say `on_max: succeed` to keep the last iteration's outputs"
            )
        return tally

    def _nested_order(self, step: Step) -> dict[str, Any]:
        """The `step_started` fields of a step with nested steps: `steps`, those steps in
        run order (so the snapshot view, cassettes and report order their events as they
        order the run's), and for a `workflow:` step the file it runs."""
        if step.id not in self.workflow.bodies:
            return {}
        steps = {"steps": self.workflow.bodies[step.id].plan.order()}
        return {"workflow": step.workflow, **steps} if isinstance(step, WorkflowStep) else steps

    async def _workflow_step(self, step: WorkflowStep, context: Mapping[str, Any]) -> StepRecord:
        """The included workflow's steps, run by an executor of their own under this step's
        scope, sharing the run's model, tools, log, slots and resume; its outputs are the
        step's output, and the first of its steps that failed is the step's reason."""
        child = step.child
        try:
            inputs = coerce_inputs(child, templating.render_value(thawed(step.with_), context))
        except InputError as error:
            raise InputError(
                f"with: {error.message}",
                hint=f"give {step.workflow}'s inputs in the step's `with:`",
            ) from None
        nested = self._nested(
            step, self._scoped(step.id), inputs, nested_context(child, inputs, context)
        )
        try:  # only the step's own `timeout:`: the file's steps have their own defaults
            with anyio.fail_after(step.timeout):
                result = await nested.run()
        except TimeoutError:
            raise StepFailedError(
                f"workflow {step.workflow} did not finish within {step.timeout} s",
                hint="raise the step's `timeout:`",
            ) from None
        failed = next((r for r in result.steps if r.status == "failed"), None)
        return StepRecord(
            step.id,
            "succeeded" if result.status == "succeeded" else "failed",
            output=result.outputs,
            error=result.error,
            hint=failed.hint if failed is not None and result.error else None,
            rounds=sum(r.rounds for r in result.steps),
            tool_calls=sum(r.tool_calls for r in result.steps),
            usage=result.usage,
        )

    async def _ask_step(
        self, step: AskStep, context: Mapping[str, Any], item: int | None
    ) -> StepRecord:
        emit = self.log.for_step(self._scoped(step.id), item)
        output = await ask_step.run_step(step, context, answers=self.answers, item=item, emit=emit)
        return StepRecord(step.id, "succeeded", output=output)

    async def _embed_step(
        self, step: EmbedStep, context: Mapping[str, Any], item: int | None
    ) -> StepRecord:
        model = self.workflow.step_model(step)
        assert model is not None  # `model:` is required on embed steps
        outcome = await embed_step.run_step(
            step,
            context,
            model=self.chat,
            model_id=model,
            concurrency=self.workflow.defaults.concurrency,
            timeout=self._timeout(step),
            emit=self.log.for_step(self._scoped(step.id), item),
        )
        return StepRecord(
            step.id, "succeeded", output=outcome.output, model=model, usage=outcome.usage
        )

    async def _agent_step(
        self, step: AgentStep, context: Mapping[str, Any], item: int | None
    ) -> StepRecord:
        defaults = self.workflow.defaults
        model = self.workflow.step_model(step)
        assert model is not None
        toolbox = None
        if step.mcp and self.tools is not None:
            toolbox = self.tools.toolbox(step.mcp, step.tools, self._result_limits(step))
        system, opening, prompt = await step_prompts(step, self.tools, context)
        task = AgentTask(
            model=model,
            system=system,
            prompt=prompt,
            opening=opening,
            temperature=step.temperature if step.temperature is not None else defaults.temperature,
            max_tokens=step.max_tokens if step.max_tokens is not None else defaults.max_tokens,
            # the default applies to steps that offer tools; a step without any has no choice
            tool_choice=step.tool_choice or (defaults.tool_choice if step.mcp else None),
            output_schema=thawed(step.output_schema) if step.output_schema else None,
            history=self._history(step),
            images=step_images(step.images, context, self.workflow.path, self.log.redactor.text),
            vision=sees_images(self.chat, model),
        )
        limits = AgentLimits(
            max_rounds=step.max_rounds or defaults.max_rounds, timeout=self._timeout(step)
        )
        emit = self.log.for_step(self._scoped(step.id), item)
        spent = AgentTally()
        try:
            outcome = await run_agent(self.chat, task, toolbox, limits, emit, spent)
        except LmflowError as error:
            # A failed step still says what it spent: rounds, tool calls and tokens.
            return StepRecord(
                step.id,
                "failed",
                error=error.message,
                hint=error.hint,
                model=model,
                rounds=spent.rounds,
                tool_calls=spent.tool_calls,
                usage=spent.usage,
            )
        return StepRecord(
            step.id,
            "succeeded",
            output=outcome.output,
            model=model,
            rounds=outcome.rounds,
            tool_calls=outcome.tool_calls,
            usage=outcome.usage,
            conversation=outcome.messages if step.id in self.continued else None,
        )

    def _history(self, step: AgentStep) -> tuple[Message, ...]:
        """The conversation a `continue:` step goes on with (none for any other step)."""
        if step.continue_ is None:
            return ()
        history = self.conversations.get(step.continue_)
        if history is None:
            raise StepFailedError(
                f"step {step.continue_!r} did not succeed, so there is no conversation to continue",
                hint=f"a step with `continue: {step.continue_}` and an `if:` runs even when "
                f"{step.continue_!r} did not; check `steps.{step.continue_}.status` in the "
                "condition",
            )
        return history


def _continues(step: Step) -> dict[str, Any]:
    """The `continues` field of a `continue:` step's `step_started` (absent otherwise)."""
    if isinstance(step, AgentStep) and step.continue_ is not None:
        return {"continues": step.continue_}
    return {}


def _reused_from(record: StepRecord) -> dict[str, Any]:
    """The `reused_from` field of a reused result's event (absent otherwise)."""
    return {"reused_from": record.reused_from} if record.reused_from else {}


def _hint(record: StepRecord) -> dict[str, Any]:
    """The `hint` field of a failed step's event, when its error says how to fix it."""
    return {"hint": record.hint} if record.hint else {}


def _brief(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:79] + "…"
