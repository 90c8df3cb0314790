"""The published workflow schema, loaded once, and its translation into readable problems.

jsonschema's own messages ("Additional properties are not allowed ('promt' was
unexpected)") are accurate but not kind; here each error becomes a Problem that points at
the offending key and says what to write instead.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Sequence
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .problems import Problem
from .source import JsonPath, SourceMap

TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "empty (null)",
}
SCHEMA_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
    "null": "empty",
}
PATTERN_EXPLAINED = {
    "^[A-Za-z_][A-Za-z0-9_]*$": "letters, digits and underscores, not starting with a digit",
    "^[A-Za-z_][A-Za-z0-9_-]*$": "letters, digits, '_' and '-', not starting with a digit",
    "^[A-Za-z_][A-Za-z0-9_.-]*$": "letters, digits, '_', '.' and '-', not starting with a digit",
    "^https?://": "an http:// or https:// URL",
    "^(https?://|\\{\\{)": "an http:// or https:// URL",
    "^[A-Za-z_][A-Za-z0-9_-]*\\.[^.\\s]": "server.tool, e.g. filesystem.read_text_file",
}

NOTES_ALTERNATIVE = re.compile(r"\^\(x-\.\*\|(.*)\)\$")
"""Name patterns of the form ^(x-.*|NAME)$ accept the user's own x- entries besides names."""


def schema_text() -> str:
    return (resources.files("runner.spec") / "workflow.schema.json").read_text("utf-8")


@cache
def workflow_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


@cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(workflow_schema())


def did_you_mean(word: str, candidates: Sequence[str]) -> str | None:
    """A hint naming the closest candidates, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"


NAMED_ENTRIES = {"mcp_servers": "server", "inputs": "input", "agents": "agent"}
"""The top-level maps whose entries are named by their key, and what an entry is called."""


def describe(path: JsonPath, data: Any) -> str:
    """A human name for the place at `path`: "step 'survey'", "server 'fs'", "defaults"."""
    if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
        name, here, rest = "", path[:2], path[2:]
        while True:
            step_id = _get(data, (*here, "id"))
            named = (
                f"step {step_id!r}" if isinstance(step_id, str) else f"step #{int(here[-1]) + 1}"
            )
            name = f"{named} in loop {name[5:]}" if name else named
            if len(rest) < 3 or rest[:2] != ("loop", "steps") or not isinstance(rest[2], int):
                return name + (f" key {_dotted(rest)!r}" if rest else "")
            here, rest = (*here, *rest[:3]), rest[3:]
    if len(path) >= 2 and path[0] in NAMED_ENTRIES:
        rest = path[2:]
        return f"{NAMED_ENTRIES[path[0]]} {path[1]!r}" + (f" key {_dotted(rest)!r}" if rest else "")
    return repr(_dotted(path)) if path else "the workflow"


def _dotted(path: JsonPath) -> str:
    return ".".join(str(p) for p in path)


def _get(data: Any, path: JsonPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def type_name(value: Any) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def schema_problems(data: Any, source: SourceMap) -> list[Problem]:
    """Every schema violation in `data`, translated."""
    problems: list[Problem] = []
    for error in validator().iter_errors(data):
        problems.extend(_translate(error, data, source))
    return problems


def _allowed_keys(schema: dict[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))


def _translate(error: ValidationError, data: Any, source: SourceMap) -> Iterator[Problem]:
    path: JsonPath = tuple(error.absolute_path)
    where = describe(path, data)
    kind = error.validator
    value = error.instance
    if kind == "pattern" and "propertyNames" in error.schema_path:
        kind = "propertyNames"  # jsonschema reports the name's failed pattern, not propertyNames

    def problem(
        message: str, rule: str, hint: str | None = None, *, at: JsonPath = path, key: bool = False
    ) -> Problem:
        pos = source.key_position(at) if key else source.position(at)
        return Problem(source.path, pos.line, pos.col, message, rule, hint)

    if kind == "additionalProperties":
        allowed = _allowed_keys(error.schema)
        patterns = list(error.schema.get("patternProperties", {}))
        for key in value:
            if key in allowed or any(re.search(p, key) for p in patterns):
                continue
            yield problem(
                f"unknown key {key!r} in {where}",
                "unknown-key",
                _unknown_key_hint(key, allowed, path, value),
                at=(*path, key),
                key=True,
            )
    elif kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        unknown = [k for k in value if k not in _allowed_keys(error.schema)]
        for key in missing:
            if did_you_mean(key, unknown):
                continue  # a misspelling of it is reported as an unknown key, with this fix
            yield problem(
                f"{where} is missing the required key {key!r}",
                "missing-key",
                _missing_key_hint(key, path),
                key=True,
            )
    elif kind == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else expected
        wanted = " or ".join(SCHEMA_TYPE_NAMES.get(n, n) for n in names)
        yield problem(
            f"{where} must be {wanted}, not {type_name(value)}",
            "wrong-type",
            _type_hint(value, names),
        )
    elif kind == "const":
        yield problem(
            f"{where} must be {error.validator_value!r}, not {value!r}",
            "bad-value",
            "lmflow reads version 1 of the workflow format",
        )
    elif kind == "enum":
        options = [str(o) for o in error.validator_value]
        hint = did_you_mean(str(value), options) or "choose one of: " + ", ".join(options)
        yield problem(
            f"{where} is {value!r}; it must be one of {', '.join(options)}", "bad-value", hint
        )
    elif kind == "pattern":
        explained = PATTERN_EXPLAINED.get(error.validator_value, f"match {error.validator_value}")
        yield problem(
            f"{where} is {value!r}; it must be {explained}", "bad-value", _pattern_hint(path)
        )
    elif kind == "propertyNames":
        # the error's instance is the offending key; its position is the key's
        key = value
        pattern = error.validator_value
        own_notes = NOTES_ALTERNATIVE.fullmatch(pattern)
        if own_notes:  # ^(x-.*|NAME)$: explain NAME, mention x- entries
            pattern = f"^{own_notes.group(1)}$"
        explained = PATTERN_EXPLAINED.get(pattern, "a valid name")
        used_as = {
            "inputs": "templates as {{ inputs.<name> }}",
            "outputs": "the run's outputs",
            "mcp_servers": "`mcp: [name]` and `tool: name.tool`",
            "models": "`model: name`",
        }
        yield problem(
            f"name {key!r} in {where} must be {explained}",
            "bad-name",
            f"names are used in {used_as.get(str(path[-1]) if path else '', 'templates')}"
            + ("; keys starting with x- are your own notes" if own_notes else ""),
            at=(*path, key),
            key=True,
        )
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = error.validator_value
        words = {
            "minimum": f"at least {bound}",
            "maximum": f"at most {bound}",
            "exclusiveMinimum": f"greater than {bound}",
            "exclusiveMaximum": f"less than {bound}",
        }[kind]
        yield problem(f"{where} is {value!r}; it must be {words}", "bad-value")
    elif kind == "minItems":
        yield problem(
            f"{where} must not be empty",
            "bad-value",
            "add at least one step" if path == ("steps",) else None,
        )
    elif kind == "maxItems":  # the list itself is not repeated: it may be thousands long
        yield problem(
            f"{where} has {len(value):,} entries; it may have at most {error.validator_value}",
            "bad-value",
            "keep the entries lmflow needs, or split the work into several runs",
        )
    elif kind == "minLength":
        yield problem(f"{where} must not be empty", "bad-value")
    elif kind == "uniqueItems":
        yield problem(f"{where} lists the same entry twice", "duplicate-entry")
    elif kind == "not":
        yield problem(
            f"{where} must not be {value!r}",
            "bad-value",
            "use -1 for no limit, or a positive number",
        )
    else:
        yield problem(f"{where}: {error.message}", "schema")


def _unknown_key_hint(key: str, allowed: list[str], path: JsonPath, obj: Any) -> str:
    is_step = len(path) >= 2 and path[-2] == "steps" and isinstance(path[-1], int)
    if is_step and "loop" in obj and key in ("for_each", "concurrency"):
        return (
            f"a loop step runs once, its iterations one after another; put `{key}:` on a "
            "step inside the loop, or loop over the items in a step before it"
        )
    if is_step and key == "with" and "tool" not in obj:
        return (
            "`with:` holds the arguments of a `tool:` step or the inputs of a `workflow:` "
            "step; add `tool: server.tool` or `workflow: path.yaml`"
        )
    if is_step and "workflow" in obj and key in ("for_each", "concurrency"):
        return (
            "a `workflow:` step runs its file once; for one run per item, put the `for_each:` "
            "on a step inside that file"
        )
    if is_step and "workflow" in obj and key != "with":
        return (
            f"a `workflow:` step runs another workflow file, which sets its own {key!r}; "
            "remove it here, or change it in that file"
        )
    if is_step and "tool" in obj and key in ("prompt", "system", "model", "mcp", "tools"):
        return (
            f"a `tool:` step calls the tool directly, without a model; remove {key!r}, "
            "or remove `tool:` to let a model do the work"
        )
    if is_step and "run" in obj and key in ("prompt", "system", "model", "mcp", "tools", "with"):
        return (
            f"a `run:` step runs a command, without a model or MCP server; remove {key!r}, "
            "or make it a step of its own"
        )
    if is_step and "ask" in obj and key in ("prompt", "system", "model", "mcp", "tools", "with"):
        return (
            f"an `ask:` step asks a person, not a model; remove {key!r}, or make it a step "
            "of its own"
        )
    if is_step and key == "agent" and ("tool" in obj or "run" in obj):
        kind = "`tool:`" if "tool" in obj else "`run:`"
        return (
            f"an agent gives a model its settings, and a {kind} step has no model; remove "
            "`agent:`, or make it a model step with `prompt:`"
        )
    if is_step and key in ("shell", "ok_codes", "max_output_chars") and "run" not in obj:
        return f"`{key}:` belongs to a command step; add `run: [program, args...]`"
    suggestion = did_you_mean(key, allowed)
    valid = "valid keys: " + ", ".join(allowed) + " (and x-* for your own notes)"
    return f"{suggestion} {valid}" if suggestion else valid


def _missing_key_hint(key: str, path: JsonPath) -> str | None:
    if key == "prompt":
        return (
            "a step needs `prompt:`, `prompt_file:` or `prompt_from:` (ask a model), "
            "`tool: server.tool` (call an MCP tool), `run: [program, args...]` (run a command) "
            "or `workflow: path.yaml` (run another workflow)"
        )
    if key == "max":
        return "a loop needs `max:`, the most iterations it may run (1 to 100), e.g. max: 3"
    if key == "until":
        return (
            "a loop needs `until:`, an expression checked after each iteration, e.g. "
            "until: steps.review.output.approved"
        )
    if key == "command":
        return "a server needs `command:` (started over stdio) or `url:` (streamable HTTP)"
    if key == "steps":
        return "add a list of steps, each with an `id` and a `prompt`"
    if key == "version":
        return "add `version: 1` at the top of the file"
    return None


def _type_hint(value: Any, expected: list[str]) -> str | None:
    if "array" in expected and isinstance(value, dict):
        return "write the entries as a list: each one starts with '- '"
    if "array" in expected and isinstance(value, str):
        return f"write a list: [{value}]"
    if "object" in expected and isinstance(value, list):
        return "write `key: value` pairs, without '- '"
    if ("number" in expected or "integer" in expected) and isinstance(value, str):
        return "write a plain number without quotes or units (timeouts are in seconds)"
    if "string" in expected and isinstance(value, (dict, list)):
        return 'quote text that starts with "{{" or "[": prompt: "{{ inputs.x }}"'
    return None


def _pattern_hint(path: JsonPath) -> str | None:
    if path[-1:] == ("id",):
        return "step ids are used as steps.<id> in templates; write my_step, not my-step"
    if path[-1:] == ("token_env",):
        return "token_env names an environment variable (e.g. LM_API_TOKEN), never the token"
    return None
