"""What `lmflow serve` shows an MCP client: one tool per workflow, with schemas from its
typed inputs and its outputs, the built-in tools' schemas, and tool results.

Pure data: no transport, no running. runner/serve.py answers the requests with these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import mcp_types as types

from .errors import InputError
from .spec.model import Workflow, thawed

if TYPE_CHECKING:
    from .api import WorkflowResult
    from .catalog import Catalog
    from .errors import LmflowError
    from .spec import Problem

AGENT = "agent"
MODELS = "models"
VALIDATE = "validate"
BUILT_IN = (AGENT, MODELS, VALIDATE)
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def tool_name(workflow: Workflow) -> str:
    """The workflow's name in the characters MCP allows a tool name (letters, digits, `_`,
    `-`, `.`; at most 128): `Weekly report` is served as `Weekly-report`."""
    return _NOT_IN_NAME.sub("-", workflow.name).strip("-")[:128] or "workflow"


def input_schema(workflow: Workflow) -> dict[str, Any]:
    """The JSON Schema of the arguments: each input's type, description, default, enum and
    bounds; the required ones listed; no others accepted."""
    properties: dict[str, Any] = {}
    for name, spec in workflow.inputs.items():
        schema = spec.json_schema()
        if spec.description:
            schema["description"] = spec.description
        if spec.has_default:
            schema["default"] = thawed(spec.default)
        properties[name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name, spec in workflow.inputs.items() if spec.required],
        "additionalProperties": False,
    }


def output_schema(workflow: Workflow) -> dict[str, Any]:
    """The workflow's `outputs:` by name. Their values are whatever the templates render
    (text, or a step's object), so each is named and required, not typed."""
    return {
        "type": "object",
        "properties": {
            name: {"description": f"the workflow's `{name}` output"} for name in workflow.outputs
        },
        "required": list(workflow.outputs),
    }


def workflow_tool(workflow: Workflow) -> types.Tool:
    return types.Tool(
        name=tool_name(workflow),
        description=workflow.description or f"Run the lmflow workflow {workflow.name!r}.",
        input_schema=input_schema(workflow),
        output_schema=output_schema(workflow),
    )


def built_in_tools(servers: Sequence[str]) -> list[types.Tool]:
    """`agent`, `models` and `validate`; `servers` are the names `agent` may use."""
    server_names: dict[str, Any] = {"type": "string"}
    if servers:
        server_names["enum"] = list(servers)
    return [
        types.Tool(
            name=AGENT,
            description=(
                "Ask a local model (LM Studio) to do a task on its own, calling the tools of "
                "the named MCP servers. Returns its answer and the run id."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "task": {"type": "string", "description": "What the model should do."},
                    "servers": {
                        "type": "array",
                        "items": server_names,
                        "description": "MCP servers whose tools the model may call, by name"
                        + (f" ({', '.join(servers)})" if servers else " (none configured)"),
                    },
                    "model": {
                        "type": "string",
                        "description": "Model id (see the `models` tool); default: the "
                        "configured default model.",
                    },
                    "max_rounds": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Most model turns (default 10).",
                    },
                    "system": {"type": "string", "description": "A system prompt."},
                    "tool_choice": {
                        "type": "string",
                        "description": "auto (default), none, required, or a tool name to "
                        "force in the first round (small models may need it to call a tool).",
                    },
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "max_tokens": {"type": "integer", "minimum": -1},
                    "output_schema": {
                        "type": "object",
                        "description": "A JSON Schema the answer must match; the answer is "
                        "then the parsed object.",
                    },
                },
                "required": ["task"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"answer": {"description": "The model's final answer."}},
                "required": ["answer"],
            },
        ),
        types.Tool(
            name=MODELS,
            description="List the models the LM Studio server has: type, loaded or not, "
            "context length, tool use.",
            input_schema={
                "type": "object",
                "properties": {
                    "refresh": {"type": "boolean", "description": "Ignore the cached list."}
                },
                "additionalProperties": False,
            },
        ),
        types.Tool(
            name=VALIDATE,
            description="Check an lmflow workflow (its YAML text, or a path to the file) "
            "without running it; returns every problem with its line and column.",
            input_schema={
                "type": "object",
                "properties": {
                    "workflow": {
                        "type": "string",
                        "description": "The workflow's YAML text, or the path of a .yaml file.",
                    }
                },
                "required": ["workflow"],
                "additionalProperties": False,
            },
        ),
    ]


def check_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """A built-in tool's arguments against its input schema: every problem, each naming
    its input, as an InputError (a tool error, no run started)."""
    from jsonschema import Draft202012Validator

    problems = []
    for error in Draft202012Validator(schema).iter_errors(dict(arguments)):
        where = f"input {error.path[0]!r}: " if error.path else ""
        problems.append(where + error.message)
    if problems:
        raise InputError("; ".join(problems), hint="the tool's inputSchema lists its inputs")


def text(content: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=content)]


def error_result(error: LmflowError) -> types.CallToolResult:
    """A tool error (isError) saying what is wrong and how to fix it."""
    message = error.message + (f"\nhint: {error.hint}" if error.hint else "")
    return types.CallToolResult(content=text(message), is_error=True)


def run_result(result: WorkflowResult) -> types.CallToolResult:
    """A finished run: its outputs as structured content, and a text naming the run id. A
    run that did not succeed is a tool error saying which step failed and why."""
    where = f"run {result.run_id}" + (f" (log: {result.run_dir})" if result.run_dir else "")
    meta = {"lmflow/run_id": result.run_id, "lmflow/status": result.status}
    if not result.ok:
        failed = [
            f"step {step.id!r} failed: {step.error}"
            for step in result.steps.values()
            if step.status == "failed"
        ]
        lines = [f"{result.workflow}: {result.status} ({where})", *failed]
        if result.error and not failed:
            lines.append(result.error)
        return types.CallToolResult(content=text("\n".join(lines)), is_error=True, _meta=meta)
    outputs = dict(result.outputs)
    lines = [f"{result.workflow}: succeeded ({where})"]
    lines += [f"{name}: {_readable(value)}" for name, value in outputs.items()]
    return types.CallToolResult(
        content=text("\n".join(lines)), structured_content=outputs, _meta=meta
    )


def models_result(catalog: Catalog) -> types.CallToolResult:
    rows = [
        f"{model.id}  {model.type}  {model.state}  tools: "
        + {True: "yes", False: "no", None: "?"}[model.tool_use]
        for model in catalog.models
    ]
    summary = f"{len(catalog.models)} models on {catalog.server}"
    return types.CallToolResult(
        content=text("\n".join([*rows, summary])),
        structured_content={
            "server": catalog.server,
            "models": [model.as_dict() for model in catalog.models],
        },
    )


def problems_result(problems: Sequence[Problem]) -> types.CallToolResult:
    valid = not any(problem.is_error for problem in problems)
    lines = [problem.format() for problem in problems]
    lines.append("valid" if valid else f"invalid: {sum(p.is_error for p in problems)} error(s)")
    return types.CallToolResult(
        content=text("\n".join(lines)),
        structured_content={"valid": valid, "problems": [p.as_dict() for p in problems]},
    )


def _readable(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
