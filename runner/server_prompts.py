"""A step's prompts from MCP server prompts: `prompt_from:` and `system_from:`.

A server prompt is fetched (prompts/get) with its arguments rendered, when the step runs.
It goes through the run's tool provider as a call of the reserved name `PROMPT_GETTER`, as
lmflow's own `read_resource` does: live sessions answer it with prompts/get, a recording
keeps the answer in the cassette, and a replay answers it from there, with no server.
The answer's `structured` holds the messages, each `{role, content}` with its content as
the text a model reads (images and binary resources saved and named, as in tool results).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import templating
from .chat import Message
from .errors import StepFailedError
from .spec.model import AgentStep, thawed

if TYPE_CHECKING:
    from .executor import ToolProvider

PROMPT_GETTER = "prompts/get"
"""The name a prompt fetch is called by (`{name, arguments}`): no MCP tool name holds a `/`."""


async def step_prompts(
    step: AgentStep, tools: ToolProvider | None, context: Mapping[str, Any]
) -> tuple[str | None, tuple[Message, ...], str]:
    """The step's system prompt, the messages before its prompt, and its prompt: its own
    texts rendered, or its server prompts fetched."""
    system = templating.render_text(step.system, context) if step.system else None
    opening: tuple[Message, ...] = ()
    prompt = templating.render_text(step.prompt or "", context)
    if step.system_from is not None:
        messages = await fetch_prompt(tools, step.system_from, context)
        system = "\n\n".join(message["content"] for message in messages)
    if step.prompt_from is not None:
        messages = await fetch_prompt(tools, step.prompt_from, context)
        opening, prompt = _opening(messages, step.prompt_from)
    return system, opening, prompt


def described(spec: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """What `lmflow run --dry-run` shows for a server prompt: nothing is fetched then."""
    name, arguments = _rendered(spec, context)
    given = ", ".join(f"{key}={value}" for key, value in arguments.items())
    return (
        f"<prompt {name!r} of MCP server {spec['server']!r} ({given}), fetched when the step runs>"
    )


async def fetch_prompt(
    tools: ToolProvider | None, spec: Mapping[str, Any], context: Mapping[str, Any]
) -> list[dict[str, str]]:
    """The messages of the server prompt `spec` names, its arguments rendered as text."""
    server = spec["server"]
    name, arguments = _rendered(spec, context)
    if tools is None:  # the server is in use whenever a step names it: a caller's slip
        raise StepFailedError(f"prompt {name!r}: MCP server {server!r} was not started")
    result = await tools.call_tool(server, PROMPT_GETTER, {"name": name, "arguments": arguments})
    if result.is_error:
        raise StepFailedError(
            f"prompt {name!r} of MCP server {server!r}: {result.text}",
            hint=f"`lmflow validate --servers` checks the prompt's name and arguments against "
            f"what {server!r} offers",
        )
    structured = result.structured if isinstance(result.structured, Mapping) else {}
    return [dict(message) for message in structured.get("messages") or ()]


def _rendered(spec: Mapping[str, Any], context: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The prompt's name and its arguments, rendered as text."""
    arguments = {
        key: _as_text(templating.render_value(value, context))
        for key, value in thawed(spec.get("arguments") or {}).items()
    }
    return templating.render_text(spec["name"], context), arguments


def _opening(
    messages: Sequence[Mapping[str, str]], spec: Mapping[str, Any]
) -> tuple[tuple[Message, ...], str]:
    """The messages before the prompt, and the prompt: the last message, a user's."""
    where = f"prompt {spec['name']!r} of MCP server {spec['server']!r}"
    if not messages:
        raise StepFailedError(f"{where} has no messages", hint="ask its author, or use prompt:")
    *earlier, last = messages
    if last.get("role") != "user":
        raise StepFailedError(
            f"{where} ends with an {last.get('role')} message; a step's conversation ends with "
            "the user's",
            hint="use the prompt as the system prompt (system_from:), or write prompt: yourself",
        )
    turns = tuple({"role": m["role"], "content": m["content"]} for m in earlier)
    return turns, last["content"]


def _as_text(value: Any) -> str:
    """A prompt argument as MCP carries it: text (a number or true/false as JSON writes it)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
