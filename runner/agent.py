"""The shared agent engine: a model, a prompt and a toolbox in; an answer and events out.

It knows nothing of workflows or YAML, so the executor, `lmflow agent` and any future caller
run exactly the same loop. Small local models misbehave (broken tool arguments, invented tool
names, empty turns, JSON that misses the schema); the engine hands each slip back to the model
as something it can correct, and records it as an `agent_notice` event.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing.exceptions import Unresolvable

from .chat import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    Image,
    Message,
    Toolbox,
    ToolCall,
    Usage,
    described_messages,
    user_message,
)
from .errors import ConfigurationError, StepFailedError
from .results import full_result_fields, image_fields
from .tool_text import recover_calls, repair_arguments

Emit = Callable[[str, dict[str, Any]], None]
"""Receives each event: its type and its fields (every one has `round`)."""

MAX_REPORTED_SCHEMA_ERRORS = 5
_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class AgentLimits:
    """How far one run may go. Repair requests come on top of `max_rounds` so that even a
    one-round step can have its structured answer corrected."""

    max_rounds: int = 10
    timeout: float | None = None
    max_repairs: int = 2

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ConfigurationError(f"max_rounds must be at least 1, not {self.max_rounds}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, not {self.timeout}")
        if self.max_repairs < 0:
            raise ConfigurationError(f"max_repairs must not be negative, not {self.max_repairs}")


@dataclass(frozen=True)
class AgentTask:
    """What to ask and how. `tool_choice` is "auto", "none", "required" or a tool name."""

    model: str
    prompt: str
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tool_choice: str | None = None
    output_schema: Mapping[str, Any] | None = None
    history: tuple[Message, ...] = ()
    """An earlier conversation (system prompt, messages, tool calls, answer) that this task
    continues: the prompt comes after it. It keeps its own system prompt, so `system` must
    be None then."""
    opening: tuple[Message, ...] = ()
    """Messages this task opens with, after the system prompt and before the prompt: a
    server prompt's turns (`prompt_from:`)."""
    images: tuple[Image | str, ...] = ()
    """Images sent with the prompt: an `Image`, or a URL the server is given as it is."""
    vision: bool = False
    """Whether the model sees images: then the images tool calls return are shown to it too
    (in a user turn after the tool results: servers take images only in user messages)."""


@dataclass
class AgentTally:
    """What a run has spent so far. The caller may hand one in and read it when the run
    fails, so a failed step still says how many rounds, tool calls and tokens it used."""

    rounds: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class AgentResult:
    """`output` is the answer text, or the parsed object when the task has an output schema."""

    output: Any
    text: str
    rounds: int
    tool_calls: int
    usage: Usage
    messages: tuple[Message, ...]
    """The whole conversation, the task's `history` and the final answer included: what a
    later task continues."""


async def run_agent(
    model: ChatModel,
    task: AgentTask,
    toolbox: Toolbox | None,
    limits: AgentLimits,
    emit: Emit,
    tally: AgentTally | None = None,
) -> AgentResult:
    """Loop until the model answers without tool calls; every call of a turn runs concurrently.

    Structured output: `response_format` is sent only on requests that offer no tools, because
    some servers cannot both constrain the answer to a schema and let the model call tools.
    With tools, the prompt states the schema, the final answer is validated, and if it does not
    match the model is asked again with `response_format` and without tools.

    A forced `tool_choice` ("required" or a tool name) applies to the first round only, then
    falls back to "auto": forcing every turn would never let it answer. The last allowed
    round offers no tools at all, so the model must answer in text; a call it repeats with
    the same arguments is answered from the earlier result, with a note to answer now.
    Calls the server did not parse are read back from the reply text (runner/tool_text.py).

    `tally`, when given, holds the rounds, tool calls and usage spent, also when the run fails.

    Raises `ConfigurationError` for a task that cannot be run (a `tool_choice` naming a tool
    that is not offered, an invalid output schema), `StepFailedError` when the rounds, the
    repairs or the time run out, and lets `MCPServerError` and LLM client errors through.
    """
    run = _Run(model, task, toolbox, limits, emit)
    try:
        if limits.timeout is None:
            return await run.loop()
        try:
            return await asyncio.wait_for(run.loop(), limits.timeout)
        except asyncio.TimeoutError:
            raise StepFailedError(
                f"no final answer within the timeout of {limits.timeout:g} s (in round {run.round})"
            ) from None
    finally:
        if tally is not None:
            tally.rounds, tally.tool_calls, tally.usage = run.round, run.calls, run.usage


@dataclass(frozen=True)
class _Reply:
    """What goes back to the model for one tool call."""

    content: str
    is_error: bool
    full_text: str | None = None
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class _Earlier:
    """A call already made in this run: the round it was made in and its reply (still
    running when the repeat comes in the same turn)."""

    round: int
    reply: asyncio.Future[_Reply]


class _Run:
    """The state of one `run_agent` call: the conversation and its counters."""

    def __init__(
        self,
        model: ChatModel,
        task: AgentTask,
        toolbox: Toolbox | None,
        limits: AgentLimits,
        emit: Emit,
    ) -> None:
        self.model = model
        self.task = task
        self.limits = limits
        self.emit = emit
        self.toolbox = toolbox
        specs = () if toolbox is None or task.tool_choice == "none" else tuple(toolbox.specs())
        self.tools = tuple(spec.as_openai() for spec in specs)
        self.tool_names = tuple(spec.name for spec in specs)
        self.tool_choice = _resolve_tool_choice(task.tool_choice, self.tool_names)
        if self.tool_choice not in (None, "auto", "none") and limits.max_rounds < 2:
            raise ConfigurationError(
                f"tool_choice {task.tool_choice!r} forces a tool call, but max_rounds "
                f"{limits.max_rounds} leaves no round for the answer",
                hint="set max_rounds to 2 or more: the last round offers no tools",
            )
        # A plain copy: callers may hold the schema as read-only mappings and tuples, which
        # neither `json` nor the JSON Schema meta-schema accept.
        self.schema = (
            None
            if task.output_schema is None
            else json.loads(json.dumps(task.output_schema, default=dict))
        )
        self.validator = _validator(self.schema)
        # With tools on offer the schema is enforced only once the model has stopped calling them.
        self.structured = self.schema is not None and not self.tools
        if task.system is not None and task.history:
            raise ConfigurationError(
                "a continued conversation keeps its own system prompt",
                hint="drop `system:` from the step that continues it",
            )
        self.messages: list[Message] = list(task.history)
        if task.system is not None:
            self.messages.append({"role": "system", "content": task.system})
        self.messages.extend(task.opening)
        self.messages.append(user_message(self._first_prompt(), task.images))
        self.sent = len(task.history)  # the log tells only what this task adds
        self.round = 0
        self.repairs = 0
        self.calls = 0
        self.usage = Usage()
        self.earlier: dict[tuple[str, str], _Earlier] = {}

    def _first_prompt(self) -> str:
        if self.schema is None or self.structured:
            return self.task.prompt
        return (
            f"{self.task.prompt}\n\nWhen you are done, reply with only a JSON object that "
            f"matches this JSON schema:\n{json.dumps(self.schema)}"
        )

    @property
    def last_round(self) -> bool:
        """Whether this round is the last one allowed: it offers no tools."""
        return self.round >= self.limits.max_rounds + self.repairs

    async def loop(self) -> AgentResult:
        while True:
            self.round += 1
            self._before_last_round()
            response = self._read_calls(await self._ask())
            if self.tool_choice not in (None, "auto", "none"):
                self.tool_choice = "auto"  # a forced choice applies to the first round only
            self.messages.append(response.assistant_message())
            text = response.content or ""
            if response.tool_calls:
                self.calls += len(response.tool_calls)
                if self.last_round:
                    names = ", ".join(sorted({c.name for c in response.tool_calls}))
                    raise self._out_of_rounds(
                        f"in round {self.round}, the last, the model still called {names} "
                        "although no tools were offered"
                    )
                await self._run_tools(response.tool_calls)
            elif not text.strip():
                self._notice(
                    "empty_answer",
                    f"the model gave neither text nor tool calls "
                    f"(finish_reason {response.finish_reason!r})",
                )
                if self.last_round:
                    raise self._out_of_rounds("its last reply was empty")
                self._say("Your last reply was empty. Please answer.")
            elif self.validator is None:
                return self._result(text, text)
            else:
                parsed, problems = self._check(self.validator, text)
                if not problems:
                    return self._result(parsed, text)
                self._repair(problems)

    def _out_of_rounds(self, why: str) -> StepFailedError:
        return StepFailedError(
            f"no final answer after {self.round} rounds: {why}",
            hint="raise max_rounds, or tell the model when to stop calling tools",
        )

    def _before_last_round(self) -> None:
        """Say so when the last round takes the tools away, and tell the model to answer
        if it has just had tool results."""
        if not (self.last_round and self.tools and not self.structured):
            return
        self._notice(
            "last_round",
            f"round {self.round} is the last (max_rounds {self.limits.max_rounds}): "
            "no tools are offered, the model must answer",
        )
        if self._had_tool_results():
            self._say(
                "This is your last turn and no more tools can be called. "
                "Answer now with what you have."
            )

    def _read_calls(self, response: ChatResponse) -> ChatResponse:
        """The response with its tool calls made usable: calls written as text read back,
        broken argument JSON repaired (each recorded as a notice)."""
        if not response.tool_calls:
            recovered = recover_calls(response.content or "", self.tool_names)
            if recovered is None:
                return response
            self._notice(
                "recovered_tool_call",
                f"read {len(recovered.calls)} tool call(s) written as {recovered.format} "
                f"text: {', '.join(c.name for c in recovered.calls)}",
            )
            calls = tuple(
                ToolCall(f"recovered_{self.round}_{i}", c.name, c.arguments)
                for i, c in enumerate(recovered.calls, 1)
            )
            return replace(response, content=recovered.rest, tool_calls=calls)
        return replace(response, tool_calls=tuple(map(self._repaired, response.tool_calls)))

    def _repaired(self, call: ToolCall) -> ToolCall:
        """The call with its arguments as valid JSON when they can be repaired; the model
        then sees the repaired call in the conversation, and no round is spent on it."""
        if _parse_arguments(call.arguments)[1] is None:
            return call
        arguments = repair_arguments(call.arguments)
        if arguments is None:
            return call
        fixed = json.dumps(arguments, ensure_ascii=False)
        self._notice("repaired_arguments", f"{call.name}: {call.arguments} -> {fixed}")
        return replace(call, arguments=fixed)

    async def _ask(self) -> ChatResponse:
        offer = not self.structured and not self.last_round
        response_format = (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "output",
                    "strict": True,
                    "schema": self.schema,
                },
            }
            if self.structured
            else None
        )
        request = ChatRequest(
            model=self.task.model,
            messages=tuple(self.messages),
            tools=self.tools if offer else (),
            tool_choice=self.tool_choice if offer and self.tools else None,
            temperature=self.task.temperature,
            max_tokens=self.task.max_tokens,
            response_format=response_format,
        )
        params: dict[str, Any] = {
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "tool_choice": request.tool_choice,
        }
        if response_format is not None:
            params["response_format"] = response_format
        self.emit(
            "llm_request",
            {
                "round": self.round,
                "model": request.model,
                "messages": described_messages(self.messages[self.sent :]),
                "tools": [t["function"]["name"] for t in request.tools],
                "params": params,
            },
        )
        self.sent = len(self.messages)
        response = await self.model.chat(request)
        self.usage += response.usage
        self.emit(
            "llm_response",
            {
                "round": self.round,
                "content": response.content,
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments}
                    for c in response.tool_calls
                ],
                "finish_reason": response.finish_reason,
                "reasoning": response.reasoning,
                "usage": response.usage.as_dict(),
                # Which model answered, and how fast: only a live server says (not a replay).
                **({"served": dict(response.served)} if response.served else {}),
            },
        )
        return response

    async def _run_tools(self, calls: Sequence[ToolCall]) -> None:
        """Run the turn's calls concurrently; record and answer them in the order they came."""
        pending = [self._prepare(call) for call in calls]
        replies = await _gather_or_cancel(pending)
        for call, reply in zip(calls, replies, strict=True):
            self.emit(
                "tool_result",
                {
                    "round": self.round,
                    "id": call.id,
                    "name": call.name,
                    "is_error": reply.is_error,
                    "content": reply.content,
                    **full_result_fields(reply.full_text),
                    **image_fields(reply.images),
                },
            )
            self.messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": reply.content}
            )
        self._show_images(calls, replies)

    def _show_images(self, calls: Sequence[ToolCall], replies: Sequence[_Reply]) -> None:
        """A vision model sees the images the turn's tools returned, in one user turn after
        the tool results; another model reads only the text that names them."""
        shown = [(c, r.images) for c, r in zip(calls, replies, strict=True) if r.images]
        if not self.task.vision or not shown:
            return
        names = ", ".join(f"{call.name} ({len(images)})" for call, images in shown)
        text = f"The images the tool calls returned, in order: {names}."
        self.messages.append(user_message(text, [i for _, images in shown for i in images]))

    def _prepare(self, call: ToolCall) -> Awaitable[_Reply]:
        """Record the call and check it, in call order; what is returned runs the tool, or
        gives back the earlier reply to the same call, or the error that stopped it."""
        arguments, problem = _parse_arguments(call.arguments)
        self.emit(
            "tool_call",
            {
                "round": self.round,
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments if problem else arguments,
            },
        )
        if call.name not in self.tool_names:
            available = ", ".join(self.tool_names)
            hint = f"Available tools: {available}." if available else "No tools are available now."
            return self._refuse(
                "unknown_tool", f"error: there is no tool named {call.name!r}. {hint}"
            )
        if problem:
            return self._refuse(
                "invalid_arguments",
                f"error: the arguments of {call.name} {problem}: {call.arguments}\n"
                "Call the tool again with a JSON object that matches its parameters.",
            )
        assert self.toolbox is not None  # a tool name on offer implies a toolbox
        key = (call.name, json.dumps(arguments, sort_keys=True, separators=(",", ":")))
        earlier = self.earlier.get(key)
        if earlier is not None:
            self._notice(
                "repeated_call",
                f"{call.name} was called with the same arguments in round {earlier.round}: "
                "answered from that result, the tool was not called again",
            )
            return self._repeat(call.name, earlier)
        reply = asyncio.ensure_future(self._call(self.toolbox, call.name, arguments))
        self.earlier[key] = _Earlier(self.round, reply)
        return reply

    @staticmethod
    async def _repeat(name: str, earlier: _Earlier) -> _Reply:
        reply = await earlier.reply
        advice = (
            "Change the arguments or answer now."
            if reply.is_error
            else "Do not call it again: answer now."
        )
        note = (
            f"[note: you already called {name} with these arguments in round "
            f"{earlier.round}; this is the same result. {advice}]"
        )
        return _Reply(f"{reply.content}\n\n{note}", reply.is_error)

    def _refuse(self, kind: str, message: str) -> Coroutine[Any, Any, _Reply]:
        self._notice(kind, message)
        return _given(_Reply(message, is_error=True))

    async def _call(self, toolbox: Toolbox, name: str, arguments: dict[str, Any]) -> _Reply:
        result = await toolbox.call(name, arguments)
        text = f"error: {result.text}" if result.is_error else result.text
        return _Reply(text, result.is_error, result.full_text, result.images)

    @staticmethod
    def _check(validator: Validator, text: str) -> tuple[Any, list[str]]:
        """Parse and validate a final answer; the problems are phrased for the model."""
        try:
            parsed = _parse_json_answer(text)
        except json.JSONDecodeError as exc:
            return None, [f"the answer is not valid JSON: {exc}"]
        try:
            errors = sorted(validator.iter_errors(parsed), key=lambda e: list(e.absolute_path))
        except Unresolvable as exc:
            # Found only when an answer reaches the `$ref`; no answer can satisfy it.
            raise StepFailedError(
                f"output_schema has a $ref that cannot be resolved: {exc.ref}",
                hint="a `$ref` may point only inside the schema itself, "
                "e.g. `#/$defs/item` with the definition under `$defs:`",
            ) from None
        return parsed, [f"at {e.json_path}: {e.message}" for e in errors]

    def _repair(self, problems: list[str]) -> None:
        shown = problems[:MAX_REPORTED_SCHEMA_ERRORS]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        detail = "\n".join(f"- {p}" for p in shown)
        if self.repairs >= self.limits.max_repairs:
            raise StepFailedError(
                f"the answer does not match the output schema after "
                f"{self.repairs} repair(s):\n{detail}"
            )
        self.repairs += 1
        self._notice("schema_repair", detail)
        self.structured = True
        self._say(
            f"Your answer does not match the required JSON schema:\n{detail}\n"
            f"Reply with only a JSON object that matches this schema:\n"
            f"{json.dumps(self.schema)}"
        )

    def _had_tool_results(self) -> bool:
        """Whether the model's last turn was answered with tool results (and the images they
        returned, for a vision model)."""
        last = self.messages[-1]
        return last.get("role") == "tool" or (
            last.get("role") == "user" and self.messages[-2].get("role") == "tool"
        )

    def _say(self, text: str) -> None:
        """A user turn; joined to a user turn that is already last (the images of the tool
        results), as chat templates may insist that roles alternate."""
        last = self.messages[-1]
        if last.get("role") == "user" and isinstance(last.get("content"), list):
            self.messages[-1] = {
                **last,
                "content": [*last["content"], {"type": "text", "text": text}],
            }
        else:
            self.messages.append({"role": "user", "content": text})

    def _notice(self, kind: str, detail: str) -> None:
        self.emit("agent_notice", {"round": self.round, "kind": kind, "detail": detail})

    def _result(self, output: Any, text: str) -> AgentResult:
        return AgentResult(
            output=output,
            text=text,
            rounds=self.round,
            tool_calls=self.calls,
            usage=self.usage,
            messages=tuple(self.messages),
        )


def _resolve_tool_choice(
    choice: str | None, offered: Sequence[str]
) -> str | Mapping[str, Any] | None:
    """Map the task's choice to the request field; a forced choice needs a tool to force."""
    if choice in (None, "auto", "none"):
        return choice
    if not offered:
        raise ConfigurationError(f"tool_choice {choice!r} needs tools, but none are offered")
    if choice == "required":
        return choice
    if choice not in offered:
        raise ConfigurationError(
            f"tool_choice {choice!r} is not one of the offered tools",
            hint="offered: " + ", ".join(offered),
        )
    return {"type": "function", "function": {"name": choice}}


def _validator(schema: dict[str, Any] | None) -> Validator | None:
    if schema is None:
        return None
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ConfigurationError(
            f"output_schema is not a valid JSON Schema: {exc.message}"
        ) from None
    return cls(schema)


def _parse_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """Tool arguments as an object, or what is wrong with them. Empty text means no arguments:
    models often send it for tools without parameters."""
    if not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {}, f"are not valid JSON ({exc})"
    if not isinstance(value, dict):
        return {}, f"must be a JSON object, not {_JSON_TYPES.get(type(value), 'a number')}"
    return value, None


def _parse_json_answer(text: str) -> Any:
    """The answer as JSON, or the JSON inside a ```json fence if the model wrapped it in one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        match = _FENCE.search(text)
        if match is None:
            raise
        return json.loads(match.group(1))


async def _given(reply: _Reply) -> _Reply:
    return reply


async def _gather_or_cancel(coros: Sequence[Awaitable[_Reply]]) -> list[_Reply]:
    """Like `asyncio.gather`, but a failure cancels the calls still running instead of
    leaving them behind."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
