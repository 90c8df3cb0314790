"""Tool calls that did not arrive as tool calls: written into the reply text, or with
broken argument JSON.

Small local models often write a call in the format they were trained on instead of the
one the server parses (the server then passes it on as plain text), and they drop commas,
quotes and closing braces. Rather than spend a round asking again, the engine reads such
calls back here. Only tools on offer are accepted, so an answer that merely talks about a
tool, or one that is JSON for another purpose, stays an answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

_TAGGED = (
    # Hermes / Qwen chat templates: <tool_call>{"name": ..., "arguments": ...}</tool_call>
    ("<tool_call>", re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)),
    # LM Studio's own text form: [TOOL_REQUEST]{...}[END_TOOL_REQUEST]
    (
        "[TOOL_REQUEST]",
        re.compile(r"\[TOOL_REQUEST\]\s*(.*?)\s*(?:\[END_TOOL_REQUEST\]|\Z)", re.DOTALL),
    ),
)
_FENCED = re.compile(r"\A```[A-Za-z]*[ \t]*\n?(.*?)```\Z", re.DOTALL)
_CALL_KEYS = {"name", "arguments", "parameters"}


@dataclass(frozen=True)
class WrittenCall:
    """A call read from the reply text; `arguments` is canonical JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Recovered:
    """The calls found in a reply, the format they were in, and the text around them."""

    calls: tuple[WrittenCall, ...]
    format: str
    rest: str


def recover_calls(text: str, offered: Collection[str]) -> Recovered | None:
    """The tool calls written in `text`, when every call found names an offered tool.

    Tagged forms may hold several calls and prose around them; a bare JSON object (or a list
    of them) must be the whole reply, with nothing but `name` and `arguments`/`parameters`.
    """
    if not offered:
        return None
    for form, pattern in _TAGGED:
        payloads = pattern.findall(text)
        if payloads:
            calls = _every([_call(p, offered) for p in payloads])
            return Recovered(calls, form, pattern.sub("", text).strip()) if calls else None
    stripped = text.strip()
    fenced = _FENCED.match(stripped)
    body = (fenced.group(1) if fenced else stripped).strip()
    if not body.startswith(("{", "[")):
        return None
    value = _loads(body)
    items = value if isinstance(value, list) else [value]
    calls = _every([_call_object(item, offered, bare=True) for item in items])
    return Recovered(calls, "JSON object", "") if calls else None


def repair_arguments(raw: str) -> dict[str, Any] | None:
    """Arguments that are not valid JSON, repaired into an object where the damage is the
    usual kind (a missing brace, quote or comma, a trailing comma, single quotes); None when
    no object can be read from them."""
    from json_repair import loads  # imported here: only broken arguments pay for it

    try:
        value = loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _every(calls: list[WrittenCall | None]) -> tuple[WrittenCall, ...] | None:
    """All the calls, or None when there are none or one of them is not a call."""
    found = tuple(c for c in calls if c is not None)
    return found if found and len(found) == len(calls) else None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return repair_arguments(text)


def _call(payload: str, offered: Collection[str]) -> WrittenCall | None:
    return _call_object(_loads(payload), offered, bare=False)


def _call_object(value: Any, offered: Collection[str], *, bare: bool) -> WrittenCall | None:
    """A call from `{"name": ..., "arguments": ...}`; `bare` objects may hold nothing else."""
    if not isinstance(value, dict) or value.get("name") not in offered:
        return None
    if bare and not set(value) <= _CALL_KEYS:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        return None
    return WrittenCall(value["name"], json.dumps(arguments, ensure_ascii=False))
