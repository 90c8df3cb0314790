"""`tool:` steps checked against the tools their servers offer, before any step runs.

Once the servers have listed their tools, a direct tool call can be checked like a model
name: the tool exists (did-you-mean otherwise) and its `with:` arguments fit the tool's
input schema (missing required, unknown names, wrong types). A value that is a template is
rendered when everything it reads is known before the run (inputs, workflow, run); one that
reads step outputs, loop items or the environment is left for the call. Pure: tool lists and
a context in, Problems with file positions out.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from . import templating
from .chat import Toolbox, ToolResult
from .errors import ToolStepsInvalidError
from .spec.model import AllowList, ToolStep, Workflow, thawed, walk_steps
from .spec.problems import Problem

if TYPE_CHECKING:
    from .executor import ToolProvider
    from .mcp import ToolSource

KNOWN_BEFORE_THE_RUN = frozenset({"inputs", "workflow", "run"})
"""Template roots whose values exist before the first step (not `env`: its values are
secrets that must not reach a message)."""

_UNKNOWN = object()


class DescribedTool(Protocol):
    """What the check needs of a tool: the MCP SDK's Tool is one."""

    @property
    def name(self) -> str: ...

    @property
    def input_schema(self) -> Mapping[str, Any]: ...


def check_tool_steps(
    workflow: Workflow,
    tools_of: Callable[[str], Sequence[DescribedTool]],
    context: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Every problem of the workflow's `tool:` steps, in file order. `context` renders the
    templates that only read what is known before the run; without it they are skipped."""
    problems: list[Problem] = []
    for here, step in walk_steps(workflow.steps):
        if isinstance(step, ToolStep):
            offered = tools_of(step.tool_server)
            problems.extend(_check_step(workflow, step, here, offered, context))
    return sorted(problems, key=lambda p: (p.line, p.col))


def ensure_tool_steps(
    workflow: Workflow,
    tools_of: Callable[[str], Sequence[DescribedTool]],
    context: Mapping[str, Any] | None = None,
    more: Sequence[Problem] = (),
) -> None:
    """Raise ToolStepsInvalidError (exit 3) listing every problem, if there is one; `more`
    are problems found against the same servers elsewhere (their prompts)."""
    problems = sorted(
        [*check_tool_steps(workflow, tools_of, context), *more], key=lambda p: (p.line, p.col)
    )
    if problems:
        raise ToolStepsInvalidError(problems, str(workflow.path))


def _check_step(
    workflow: Workflow,
    step: ToolStep,
    here: tuple[str | int, ...],
    offered: Sequence[DescribedTool],
    context: Mapping[str, Any] | None,
) -> list[Problem]:
    source = workflow.source

    def problem(path: tuple[str | int, ...], message: str, rule: str, hint: str) -> Problem:
        at = source.key_position((*here, *path))
        return Problem(str(workflow.path), at.line, at.col, message, rule, hint)

    by_name = {tool.name: tool for tool in offered}
    tool = by_name.get(step.tool_name)
    if tool is None:
        close = difflib.get_close_matches(step.tool_name, list(by_name), n=3, cutoff=0.6)
        guess = f"; did you mean {' or '.join(f'{step.tool_server}.{c}' for c in close)}?"
        available = ", ".join(sorted(by_name)) or "none"
        return [
            problem(
                ("tool",),
                f"step {step.id!r}: MCP server {step.tool_server!r} has no tool "
                f"{step.tool_name!r}" + (guess if close else ""),
                "tool-not-found",
                f"tools of {step.tool_server!r}: {available}",
            )
        ]
    schema = dict(tool.input_schema or {})
    properties: Mapping[str, Any] = schema.get("properties") or {}
    arguments = thawed(step.with_)
    signature = describe_arguments(schema) or "no arguments"
    closed = "properties" in schema and not schema.get("additionalProperties")
    found = argument_name_problems(
        problem,
        step_id=step.id,
        subject=f"tool {step.tool!r}",
        rule="tool",
        given=arguments,
        given_at=("with",),
        named_at=("tool",),
        required=list(schema.get("required", ())),
        known=list(properties) if closed else None,
        add_hint=f"add them under `with:`; {step.tool} takes ({signature})",
        takes=f"{step.tool} takes ({signature})",
    )
    for name, message in _type_errors(schema, arguments, context):
        found.append(
            problem(
                ("with", name),
                f"step {step.id!r}: argument {name!r} of tool {step.tool!r}: {message}",
                "tool-argument-type",
                f"{step.tool} takes ({signature})",
            )
        )
    return found


def argument_name_problems(
    problem: Callable[[tuple[str | int, ...], str, str, str], Problem],
    *,
    step_id: str,
    subject: str,
    rule: str,
    given: Mapping[str, Any],
    given_at: tuple[str, ...],
    named_at: tuple[str, ...],
    required: Sequence[str],
    known: Sequence[str] | None,
    add_hint: str,
    takes: str,
) -> list[Problem]:
    """The required arguments `given` lacks and the names in it that `known` lacks (None:
    any name is taken), as `RULE-argument-missing` / `RULE-argument-unknown` problems: one
    wording for a tool step's `with:` and a server prompt's `arguments:`. `given_at` is
    where the arguments are written, `named_at` where the call is named (a missing argument
    is reported there when no argument is written)."""
    found: list[Problem] = []
    missing = [name for name in required if name not in given]
    if missing:
        found.append(
            problem(
                given_at if given else named_at,
                f"step {step_id!r}: {subject} needs argument(s) {', '.join(map(repr, missing))}",
                f"{rule}-argument-missing",
                add_hint,
            )
        )
    if known is None:
        return found
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
            found.append(
                problem(
                    (*given_at, name),
                    f"step {step_id!r}: {subject} takes no argument {name!r}"
                    + (f"; did you mean {close[0]!r}?" if close else ""),
                    f"{rule}-argument-unknown",
                    takes,
                )
            )
    return found


def _type_errors(
    schema: Mapping[str, Any], arguments: Mapping[str, Any], context: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    """(argument, message) for each known value the schema rejects. Missing and unknown names
    are reported by the caller, with a hint, so only errors inside an argument count here."""
    rendered = {name: _known_value(value, context) for name, value in arguments.items()}
    known = {name: value for name, value in rendered.items() if value is not _UNKNOWN}
    try:
        validator = Draft202012Validator(dict(schema))
        errors = list(validator.iter_errors(known))
    except SchemaError:
        return []  # a server's broken schema is the server's problem, found at the call
    found: dict[str, str] = {}
    for error in errors:
        if error.absolute_path:
            found.setdefault(str(error.absolute_path[0]), error.message)
    return sorted(found.items())


def _known_value(value: Any, context: Mapping[str, Any] | None) -> Any:
    """The value the call will get, when it can be known now; `_UNKNOWN` otherwise."""
    if not _has_template(value):
        return value
    if context is None or not all(_knowable(text) for text in _strings(value)):
        return _UNKNOWN
    try:
        rendered = templating.render_value(value, context)
        json.dumps(rendered, allow_nan=False)
    except Exception:  # a template that fails here, or gives what JSON cannot carry, fails
        return _UNKNOWN  # at the call, with its own message
    return rendered


def _has_template(value: Any) -> bool:
    return any(templating.is_template(text) for text in _strings(value))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings(item)]
    return []


def _knowable(text: str) -> bool:
    if not templating.is_template(text):
        return True
    tree = templating.parse_template(text)
    roots = {reference.root for reference in templating.references(tree)}
    return roots <= KNOWN_BEFORE_THE_RUN and not templating.unknown_names(tree)


class CheckedToolSteps:
    """A run's tools whose direct calls (the `tool:` steps) have their rendered arguments
    checked against the tool's input schema first. A value known only during the run (a
    step's output) that does not fit fails the step with one line saying which argument
    and why, not the server's validation dump. Toolboxes (agent steps) are the source's own.
    """

    def __init__(self, source: ToolProvider) -> None:
        self._source = source
        # Every tool provider of a run also lists its servers' tools (see limits.py).
        self._listing = cast("ToolSource", source)

    def toolbox(
        self,
        servers: Sequence[str],
        allow: AllowList,
        limits: Mapping[str, int] | None = None,
    ) -> Toolbox:
        return self._source.toolbox(servers, allow, limits)

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        found = [t for t in self._listing.tools(server) if t.name == tool]
        schema = dict(found[0].input_schema or {}) if found else {}
        errors = _type_errors(schema, arguments, None) if schema else []
        if errors:
            reasons = "; ".join(f"argument {name!r}: {message}" for name, message in errors)
            return ToolResult(f"{reasons} (it takes {describe_arguments(schema)})", is_error=True)
        return await self._source.call_tool(server, tool, arguments)


def describe_arguments(schema: Mapping[str, Any]) -> str:
    """A tool's arguments in one line: `path: string, depth?: integer` (`?`: optional)."""
    properties: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required", ()))
    return ", ".join(
        f"{name}{'' if name in required else '?'}: {_type_name(spec)}"
        for name, spec in properties.items()
    )


def _type_name(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "any"
    kind = spec.get("type")
    if isinstance(kind, list):
        return " | ".join(map(str, kind))
    if isinstance(kind, str):
        if kind == "array" and isinstance(spec.get("items"), Mapping):
            return f"array of {_type_name(spec['items'])}"
        return kind
    for union in ("anyOf", "oneOf"):
        if isinstance(spec.get(union), list):
            return " | ".join(_type_name(option) for option in spec[union])
    if "enum" in spec:
        return " | ".join(repr(v) for v in spec["enum"])
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    return "any"
