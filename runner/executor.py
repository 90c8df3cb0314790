"""Runs a Workflow: inputs, step order, conditions, tool and model steps, outputs, failures.

The executor owns the workflow semantics and nothing else: it gets a chat model and a tool
provider from its caller (live LM Studio and MCP servers, or a cassette), so the same code
runs a real run, a replay and a test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from . import templating
from .agent import AgentLimits, AgentTask, run_agent
from .chat import ChatModel, Toolbox, ToolResult, Usage
from .errors import InputError, LmflowError, StepFailedError, ToolExecutionError
from .runlog import DIRECT_CALL_ID, RunLog, SecretEnv
from .spec.model import HttpServer, McpServer, StdioServer, Step, Workflow, thawed

StepStatus = Literal["succeeded", "failed", "skipped"]
RunStatus = Literal["succeeded", "failed", "interrupted", "error"]


class ToolProvider(Protocol):
    """Where tools come from: live MCP sessions, or a cassette."""

    def toolbox(self, servers: Sequence[str], allow: Sequence[str] | None) -> Toolbox: ...

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
        if value is not None:
            for violation in Draft202012Validator(spec.json_schema()).iter_errors(value):
                errors.append(f"input {name!r}: {violation.message}")
        values[name] = value
    if errors:
        raise InputError("; ".join(errors), hint="pass inputs as -i name=value or --inputs FILE")
    return values


def _parse_input(kind: str, value: Any) -> Any:
    if not isinstance(value, str) or kind == "string":
        if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean (use true or false)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{value!r} is not JSON for an {kind}: {error.msg}") from None


# --- plan ---------------------------------------------------------------------------------


def plan(workflow: Workflow) -> list[Step]:
    """Steps in the order they run: file order, moved only as far as `needs:` requires."""
    waits = workflow.plan.dependencies()
    done: set[str] = set()
    order: list[Step] = []
    pending = list(workflow.steps)
    while pending:
        for step in pending:
            if waits[step.id] <= done:
                order.append(step)
                done.add(step.id)
                pending.remove(step)
                break
        else:  # validation rejects cycles; this guards a Workflow built by hand
            raise StepFailedError("steps wait for each other: " + ", ".join(s.id for s in pending))
    return order


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


def servers_in_use(workflow: Workflow) -> list[str]:
    """Declared servers that some step lists or calls, in declaration order."""
    used = {name for step in workflow.steps for name in step.mcp}
    used |= {step.tool_server for step in workflow.steps if step.tool_server}
    return [name for name in workflow.mcp_servers if name in used]


def render_servers(
    workflow: Workflow, names: Sequence[str], context: Mapping[str, Any]
) -> dict[str, McpServer]:
    """Server settings with their templates filled in (inputs and env only)."""

    def text(value: str) -> str:
        return templating.render_text(value, context)

    rendered: dict[str, McpServer] = {}
    for name in names:
        server = workflow.mcp_servers[name]
        if isinstance(server, StdioServer):
            rendered[name] = replace(
                server,
                command=text(server.command),
                args=tuple(text(a) for a in server.args),
                env={k: text(v) for k, v in server.env.items()},
                cwd=text(server.cwd) if server.cwd else None,
            )
        elif isinstance(server, HttpServer):
            rendered[name] = replace(
                server,
                url=text(server.url),
                headers={k: text(v) for k, v in server.headers.items()},
            )
    return rendered


# --- the run ------------------------------------------------------------------------------


class Executor:
    """Runs the planned steps of one workflow with a given model and tool provider."""

    def __init__(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        *,
        chat: ChatModel,
        tools: ToolProvider | None,
        log: RunLog,
        context: dict[str, Any],
    ) -> None:
        self.workflow = workflow
        self.inputs = dict(inputs)
        self.chat = chat
        self.tools = tools
        self.log = log
        self.context = context
        self.waits = workflow.plan.dependencies()
        self.result = RunResult(log.run_id, workflow.name, "succeeded", self.inputs)

    async def run(self) -> RunResult:
        """Run every step; `self.result` holds what finished so far, also when interrupted.
        The run's own start and end events belong to its caller (runtime), which knows how
        the run ended as a whole."""
        started = time.monotonic()
        result = self.result
        stopped_by: str | None = None
        try:
            for step in plan(self.workflow):
                if stopped_by is not None:
                    record = StepRecord(
                        step.id,
                        "skipped",
                        reason=f"the run stopped after step {stopped_by!r} failed",
                    )
                    self._finish(step, record)
                else:
                    record = await self._run_step(step)
                result.steps.append(record)
                if record.status == "failed" and not step.continue_on_error:
                    stopped_by = step.id
                    result.status = "failed"
                    result.error = f"step {step.id!r} failed: {record.error}"
            result.outputs = self._outputs(result)
        finally:
            result.duration = time.monotonic() - started
        return result

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

    def _skip_reason(self, step: Step) -> str | None:
        """Why a step does not run: a failed or skipped dependency, or a false `if:`."""
        statuses = self.context["steps"]
        if step.if_ is None:
            for dep in sorted(self.waits[step.id]):
                status = statuses.get(dep, {}).get("status")
                if status != "succeeded":
                    return f"step {dep!r} {status}"
            return None
        if not templating.evaluate(step.if_, self.context):
            return f"condition is false: {step.if_}"
        return None

    async def _run_step(self, step: Step) -> StepRecord:
        model = self.workflow.step_model(step)
        try:
            reason = self._skip_reason(step)
        except templating.TemplateError as error:
            record = StepRecord(step.id, "failed", error=f"if: {error}", model=model)
            self._finish(step, record)
            return record
        if reason is not None:
            record = StepRecord(step.id, "skipped", reason=reason, model=model)
            self._finish(step, record)
            return record
        self.log.emit(
            "step_started",
            step.id,
            name=self._title(step),
            model=model,
            kind="tool" if step.tool else "agent",
            tool=step.tool,
        )
        started = time.monotonic()
        try:
            record = await (self._tool_step(step) if step.tool else self._agent_step(step))
        except LmflowError as error:
            record = StepRecord(step.id, "failed", error=error.message, model=model)
        except templating.TemplateError as error:
            record = StepRecord(step.id, "failed", error=f"template: {error}", model=model)
        record.duration = time.monotonic() - started
        self._finish(step, record)
        return record

    def _title(self, step: Step) -> str | None:
        """The step's `name:` with its templates filled in (as written if they cannot be)."""
        if step.name is None:
            return None
        try:
            return templating.render_text(step.name, self.context)
        except templating.TemplateError:
            return step.name

    def _finish(self, step: Step, record: StepRecord) -> None:
        self.context["steps"][step.id] = {"output": record.output, "status": record.status}
        self.log.emit(
            "step_finished",
            step.id,
            status=record.status,
            output=record.output,
            error=record.error,
            reason=record.reason,
            rounds=record.rounds,
            tool_calls=record.tool_calls,
            duration=round(record.duration, 3),
            usage=record.usage.as_dict(),
        )

    def _timeout(self, step: Step) -> float | None:
        return step.timeout if step.timeout is not None else self.workflow.defaults.timeout

    async def _tool_step(self, step: Step) -> StepRecord:
        assert step.tool_server and step.tool_name and self.tools is not None
        arguments = templating.render_value(thawed(step.with_), self.context)
        self.log.emit(
            "tool_call", step.id, round=0, id=DIRECT_CALL_ID, name=step.tool, arguments=arguments
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
        self.log.emit(
            "tool_result",
            step.id,
            round=0,
            id=DIRECT_CALL_ID,
            name=step.tool,
            is_error=outcome.is_error,
            content=outcome.text,
        )
        if outcome.is_error:
            raise ToolExecutionError(f"tool {step.tool} failed: {outcome.text}")
        output = outcome.structured if outcome.structured is not None else outcome.text
        return StepRecord(step.id, "succeeded", output=output, tool_calls=1)

    async def _agent_step(self, step: Step) -> StepRecord:
        defaults = self.workflow.defaults
        model = self.workflow.step_model(step)
        assert model is not None
        toolbox = None
        if step.mcp and self.tools is not None:
            toolbox = self.tools.toolbox(step.mcp, step.tools)
        task = AgentTask(
            model=model,
            system=templating.render_text(step.system, self.context) if step.system else None,
            prompt=templating.render_text(step.prompt or "", self.context),
            temperature=step.temperature if step.temperature is not None else defaults.temperature,
            max_tokens=step.max_tokens if step.max_tokens is not None else defaults.max_tokens,
            # the default applies to steps that offer tools; a step without any has no choice
            tool_choice=step.tool_choice or (defaults.tool_choice if step.mcp else None),
            output_schema=thawed(step.output_schema) if step.output_schema else None,
        )
        limits = AgentLimits(
            max_rounds=step.max_rounds or defaults.max_rounds, timeout=self._timeout(step)
        )
        outcome = await run_agent(self.chat, task, toolbox, limits, self.log.for_step(step.id))
        return StepRecord(
            step.id,
            "succeeded",
            output=outcome.output,
            model=model,
            rounds=outcome.rounds,
            tool_calls=outcome.tool_calls,
            usage=outcome.usage,
        )
