"""The typed, immutable model of a workflow file.

Built only from data that already passed validation, so constructors do no checking of
their own. Everything is frozen: the executor and the engine read it and never write it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .agents import with_agent
from .load import read_document
from .prompt_files import read_text, with_file_texts
from .source import JsonPath, Position, SourceMap

if TYPE_CHECKING:
    from .plan import Plan

ElicitationPolicy = Literal["decline", "accept_defaults", "answers"]
InputType = Literal["string", "integer", "number", "boolean", "array", "object"]

DEFAULT_BASE_URL = "http://localhost:1234"
DEFAULT_TOKEN_ENV = "LM_API_TOKEN"
DEFAULT_MAX_ROUNDS = 10
DEFAULT_TOOL_CALL_TIMEOUT = 60.0
DEFAULT_MAX_RESULT_CHARS = 50_000
"""About 12,000 tokens: most of a 16k context. A local model cannot use a result larger than
the context LM Studio loaded it with (often 4k to 32k tokens); sent whole, such a result
makes the request fail or pushes the task out of the model's view."""
# The MCP handshake. A stdio server may be fetched first (npx/uvx on first use); an HTTP
# server is already running, so a slow handshake there means something is wrong.
DEFAULT_STDIO_STARTUP_TIMEOUT = 30.0
DEFAULT_HTTP_STARTUP_TIMEOUT = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""The largest message an HTTP server may send in one server-sent event: the SDK's own cap
(1 MiB) would fail any larger tool result, while stdio results have no cap at all."""
DEFAULT_CONCURRENCY = 4
"""Steps or items at once: LM Studio serves 4 requests in parallel by default."""
DEFAULT_EMBED_BATCH = 64
"""Texts per `/v1/embeddings` request: large enough that a few hundred documents take a few
requests, small enough that one request stays well inside a server's body and time limits."""

# A frozen empty mapping, the default for optional maps.
EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen(value: Any) -> Any:
    """Deep-freeze plain YAML data: dicts become read-only mappings, lists become tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """The inverse of `frozen`: plain dicts and lists again (for JSON, jsonschema, templates)."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class LMStudioSettings:
    base_url: str | None = None
    hosts: tuple[str, ...] = ()
    """The servers `lmflow batch` spreads rows over; empty: `base_url`'s one server."""
    token_env: str = DEFAULT_TOKEN_ENV
    timeout: float | None = None


ModelRef = str | tuple[str, ...]
"""`model:` as written: a model id or alias, or a list of them tried in order (fallback)."""


@dataclass(frozen=True)
class Defaults:
    model: ModelRef | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None
    tool_choice: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    fail_fast: bool = False


@dataclass(frozen=True)
class Input:
    name: str
    type: InputType
    description: str | None = None
    default: Any = None
    has_default: bool = False
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = True

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema a value of this input must satisfy."""
        schema: dict[str, Any] = {"type": self.type}
        if self.enum is not None:
            schema["enum"] = list(thawed(self.enum))
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


DEFAULT_SAMPLING_REQUESTS = 10
DEFAULT_SAMPLING_TOKENS = 4000


@dataclass(frozen=True)
class Sampling:
    """A server may ask lmflow's model for completions (MCP sampling), within limits."""

    model: str | None = None
    """The model that answers; None: the model of the step whose tool call asked."""
    max_requests: int = DEFAULT_SAMPLING_REQUESTS
    """Requests the server may make in one run."""
    max_tokens: int = DEFAULT_SAMPLING_TOKENS
    """Tokens (prompt and completion) its requests may use in one run."""


DEFAULT_LOGIN_TIMEOUT = 300.0


@dataclass(frozen=True)
class OAuth:
    """How lmflow logs in to an HTTP server that wants an OAuth token. Secrets are never
    written here: `client_id_env`/`client_secret_env` name environment variables."""

    grant: Literal["authorization_code", "client_credentials"] = "authorization_code"
    """authorization_code: a person logs in once (`lmflow auth`); client_credentials: CI."""
    client_id_env: str | None = None
    """A pre-registered client's id is in this variable; None: dynamic registration."""
    client_secret_env: str | None = None
    client_key_env: str | None = None
    """client_credentials: a PEM private key the client signs its JWT with, instead of a secret."""
    key_algorithm: str = "RS256"
    scope: str | None = None
    """Space-separated scopes; None: those the server asks for."""
    issuer: str | None = None
    """client_credentials: the only authorization server the credentials are sent to."""
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    """Seconds `lmflow auth` waits for the browser to come back."""


@dataclass(frozen=True)
class StdioServer:
    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    cwd: str | None = None
    timeout: float = DEFAULT_TOOL_CALL_TIMEOUT
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    startup_timeout: float = DEFAULT_STDIO_STARTUP_TIMEOUT
    max_concurrent_calls: int | None = None
    progress_extends_timeout: bool = True
    """A progress notification from the server starts the call's `timeout` afresh."""
    roots: tuple[str, ...] = ()
    """Directories the server is told it may work in (none unless the workflow names some:
    a server such as server-filesystem replaces its own directories with the client's)."""
    elicitation: ElicitationPolicy = "decline"
    """How lmflow answers the server's questions: nobody is there to ask."""
    elicitation_answers: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    """The answers of the `answers` policy, by field name."""
    sampling: Sampling | None = None
    """None: the server may not ask for completions (it is not told lmflow could)."""


@dataclass(frozen=True)
class HttpServer:
    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    timeout: float = DEFAULT_TOOL_CALL_TIMEOUT
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    startup_timeout: float = DEFAULT_HTTP_STARTUP_TIMEOUT
    max_concurrent_calls: int | None = None
    progress_extends_timeout: bool = True
    roots: tuple[str, ...] = ()
    elicitation: ElicitationPolicy = "decline"
    elicitation_answers: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    sampling: Sampling | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    oauth: OAuth | None = None
    """None: no login (a token, if any, goes in `headers:`)."""


McpServer = StdioServer | HttpServer


@dataclass(frozen=True, kw_only=True)
class _StepCommon:
    """What every kind of step has: identity, ordering, conditions, failure handling."""

    id: str
    index: int
    name: str | None = None
    needs: tuple[str, ...] = ()
    if_: str | bool | None = None
    timeout: float | None = None
    continue_on_error: bool = False
    for_each: str | tuple[Any, ...] | None = None
    """A template giving a list (or a literal list): the step runs once per item."""
    concurrency: int | None = None
    """How many items of a `for_each` run at once (default: `defaults.concurrency`)."""


@dataclass(frozen=True)
class ToolFilter:
    """`tools: {read_only: true}`: the tools of the step's servers that say they change
    nothing (MCP's `readOnlyHint`), instead of a list of names."""

    read_only: bool = False


AllowList = Sequence[str] | ToolFilter | None
"""A step's `tools:`: names (`tool` or `server.tool`), a filter, or None for every tool."""


@dataclass(frozen=True, kw_only=True)
class AgentStep(_StepCommon):
    """A step that talks to a model, which may call the tools of its `mcp:` servers."""

    kind: Literal["agent"] = "agent"
    model: ModelRef | None = None
    system: str | None = None
    prompt: str | None = None
    system_from: Mapping[str, Any] | None = None
    """`{server, name, arguments}`: the system prompt is that MCP server prompt's text."""
    prompt_from: Mapping[str, Any] | None = None
    """`{server, name, arguments}`: that MCP server prompt's messages open the conversation."""
    images: tuple[str, ...] = ()
    """Templates giving the images sent with the prompt: file paths, URLs, data: URIs."""
    mcp: tuple[str, ...] = ()
    tools: tuple[str, ...] | ToolFilter | None = None
    output_schema: Mapping[str, Any] | None = None
    max_rounds: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tool_choice: str | None = None
    max_result_chars: int | None = None
    continue_: str | None = None
    """`continue: STEP_ID`: the conversation of that earlier model step goes on with this
    step's prompt (its system prompt, messages, tool calls and answer come first)."""

    @property
    def servers(self) -> tuple[str, ...]:
        """The MCP servers the step uses: for their tools, and for its prompts."""
        prompts = (p["server"] for p in (self.system_from, self.prompt_from) if p is not None)
        return tuple(dict.fromkeys((*self.mcp, *prompts)))


@dataclass(frozen=True, kw_only=True)
class ToolStep(_StepCommon):
    """A step that calls one MCP tool directly (`tool: server.tool`), no model."""

    kind: Literal["tool"] = "tool"
    tool: str
    with_: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    @property
    def tool_server(self) -> str:
        return self.tool.split(".", 1)[0]

    @property
    def tool_name(self) -> str:
        return self.tool.split(".", 1)[1]

    @property
    def servers(self) -> tuple[str, ...]:
        return (self.tool_server,)


@dataclass(frozen=True, kw_only=True)
class CommandStep(_StepCommon):
    """A step that runs a local command (`run:`), no model and no MCP server: tests, linters,
    build tools. Its output is `{stdout, stderr, exit_code}`."""

    kind: Literal["command"] = "command"
    run: tuple[str, ...] | str
    """The arguments (argv, no shell), or one string for `/bin/sh -c` when `shell`."""
    shell: bool = False
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    ok_codes: tuple[int, ...] = (0,)
    max_output_chars: int = DEFAULT_MAX_RESULT_CHARS

    @property
    def servers(self) -> tuple[str, ...]:
        return ()


MAX_ITERATIONS = 100
"""The most iterations a `loop:` may ask for (the schema's cap on `max:`)."""


@dataclass(frozen=True)
class Loop:
    """`loop:` of a loop step: its nested steps, run again until `until` holds."""

    max: int
    until: str | bool
    steps: tuple[Step, ...]
    on_max: Literal["fail", "succeed"] = "fail"


@dataclass(frozen=True, kw_only=True)
class LoopStep(_StepCommon):
    """A step that runs its nested steps as iterations, at most `loop.max` times, until
    `loop.until` is true. Its output is the last iteration's step outputs by id, plus
    `iterations`."""

    kind: Literal["loop"] = "loop"
    loop: Loop

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for step in self.loop.steps for name in step.servers))


@dataclass(frozen=True, kw_only=True)
class WorkflowStep(_StepCommon):
    """A step that runs another workflow file (`workflow: PATH`) with `with:` as its inputs;
    its output is the child's `outputs`. The child's steps run nested, as `ID/INNER`."""

    kind: Literal["workflow"] = "workflow"
    workflow: str
    """The path as written: relative to the including file's directory, or absolute."""
    with_: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    child: Workflow
    """The included workflow, loaded and validated with the including one."""

    @property
    def servers(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True, kw_only=True)
class EmbedStep(_StepCommon):
    """A step that turns a text, or a list of texts, into embedding vectors (`embed:`), with
    an embedding model. Its output is one vector, or a list of vectors in input order."""

    kind: Literal["embed"] = "embed"
    embed: str | tuple[Any, ...]
    """A template giving a text or a list of texts, or a list of templates."""
    model: ModelRef
    batch_size: int = DEFAULT_EMBED_BATCH

    @property
    def servers(self) -> tuple[str, ...]:
        return ()


AskType = Literal["boolean", "string", "enum"]
"""What an `ask:` step's answer is: true/false, any text, or one of its `choices`."""


@dataclass(frozen=True, kw_only=True)
class AskStep(_StepCommon):
    """A step that asks a person (`ask:`): on the terminal, by `--answer`, or as an MCP
    elicitation under `lmflow serve`. Its output is the answer, typed."""

    kind: Literal["ask"] = "ask"
    ask: str
    """The question (a template)."""
    type: AskType = "string"
    choices: tuple[str, ...] = ()
    """The allowed answers of an `enum` question."""
    default: Any = None
    has_default: bool = False
    """Whether `default:` was given (a default may be false or the empty string)."""

    @property
    def servers(self) -> tuple[str, ...]:
        return ()


Step = AgentStep | ToolStep | CommandStep | LoopStep | WorkflowStep | AskStep | EmbedStep
"""The kinds of step, told apart by `kind` (and isinstance); more kinds join this union."""


def step_at(workflow: Workflow, step_id: str) -> tuple[Workflow, Step] | None:
    """The step a (scoped) id as the log writes it names, with the workflow it belongs to
    (whose models and servers it uses): `fix[2]/review` is the `review` step inside loop
    step `fix`, `suite/lint` the `lint` step of the file `workflow:` step `suite` runs."""
    owner: Workflow | None = workflow
    found: tuple[Workflow, Step] | None = None
    for segment in step_id.split("/"):
        if found is not None:
            owner = found[0].bodies.get(found[1].id)
        name = segment.partition("[")[0]
        step = next((s for s in owner.steps if s.id == name), None) if owner else None
        if owner is None or step is None:
            return None
        found = (owner, step)
    return found


def walk_steps(
    steps: Sequence[Step], here: JsonPath = ("steps",)
) -> Iterator[tuple[JsonPath, Step]]:
    """Every step with where the file writes it, nested loop bodies included (after their
    loop step): what checks that look at each step's model, tools or servers go through."""
    for step in steps:
        at = (*here, step.index)
        yield at, step
        if isinstance(step, LoopStep):
            yield from walk_steps(step.loop.steps, (*at, "loop", "steps"))


@dataclass(frozen=True)
class Workflow:
    path: Path
    name: str
    version: int = 1
    description: str | None = None
    lmstudio: LMStudioSettings = field(default_factory=LMStudioSettings)
    models: Mapping[str, ModelRef] = field(default_factory=lambda: EMPTY)
    defaults: Defaults = field(default_factory=Defaults)
    inputs: Mapping[str, Input] = field(default_factory=lambda: EMPTY)
    mcp_servers: Mapping[str, McpServer] = field(default_factory=lambda: EMPTY)
    agents: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)
    """`agents:` with their prompt files read; the steps already hold their settings."""
    steps: tuple[Step, ...] = ()
    outputs: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    source: SourceMap = field(default_factory=SourceMap, compare=False, repr=False)

    @cached_property
    def bodies(self) -> Mapping[str, Workflow]:
        """The nested steps of each step that has some, as the Workflow they run as, by the
        step's id: a loop's nested steps with this file's settings (no outputs), what one
        iteration runs; a `workflow:` step's included file. The one map nesting goes
        through (the executor, `step_at`, the nested order `step_started` announces)."""
        nested: dict[str, Workflow] = {}
        for step in self.steps:
            if isinstance(step, LoopStep):
                nested[step.id] = replace(self, steps=step.loop.steps, outputs=EMPTY)
            elif isinstance(step, WorkflowStep):
                nested[step.id] = step.child
        return MappingProxyType(nested)

    @cached_property
    def plan(self) -> Plan:
        """The dependency graph, template fields and env names, computed once."""
        from .plan import plan_workflow  # plan.py builds on this module

        return plan_workflow(self)

    def family(self) -> Iterator[Workflow]:
        """This workflow, then every workflow its `workflow:` steps include, at any depth
        (also those inside loop bodies)."""
        yield self
        for _, step in walk_steps(self.steps):
            if isinstance(step, WorkflowStep):
                yield from step.child.family()

    def model_reference(
        self, step: AgentStep | EmbedStep
    ) -> tuple[ModelRef | None, tuple[str | int, ...]]:
        """The model a step asks for (before alias resolution) and where it was written."""
        if step.model is not None:
            return step.model, ("steps", step.index, "model")
        return self.defaults.model, ("defaults", "model")

    def model_candidates(self, reference: ModelRef | None) -> tuple[str, ...]:
        """The model ids a reference means, in the order they are tried: each alias resolves
        to its id or its list of ids."""
        found: list[str] = []
        for name in _names(reference):
            for model in _names(self.models.get(name, name)):
                if model not in found:
                    found.append(model)
        return tuple(found)

    def resolve_model(self, name: ModelRef | None) -> str | None:
        """The model id a reference asks for first (an alias resolved; the head of a list):
        the name its requests carry, and the model check routes it to the server's ids."""
        candidates = self.model_candidates(name)
        return candidates[0] if candidates else None

    def step_model(self, step: Step) -> str | None:
        """The model id a step talks to, or None for a `tool:` step or when none is set."""
        if not isinstance(step, (AgentStep, EmbedStep)):
            return None
        return self.resolve_model(self.model_reference(step)[0])

    def model_references(self) -> list[tuple[tuple[str, ...], Position]]:
        """Every place that names models (alias targets, the default, each step's own), with
        the ids it means in order and where it is: what the model check judges."""
        references: list[tuple[tuple[str, ...], Position]] = []

        def add(reference: ModelRef | None, path: tuple[str | int, ...]) -> None:
            candidates = self.model_candidates(reference)
            if candidates:
                references.append((candidates, self.source.position(path)))

        for alias, target in self.models.items():
            add(target, ("models", alias))
        for name, server in self.mcp_servers.items():
            if server.sampling is not None and server.sampling.model is not None:
                add(server.sampling.model, ("mcp_servers", name, "sampling", "model"))
        add(self.defaults.model, ("defaults", "model"))
        for name, agent in self.agents.items():
            add(agent.get("model"), ("agents", name, "model"))
        for at, step in walk_steps(self.steps):
            if isinstance(step, (AgentStep, EmbedStep)) and step.model is not None:
                add(step.model, (*at, "model"))
        return references

    def models_in_use(self) -> dict[str, Position]:
        """Every model id a run of this workflow can use, with where each was first named.

        Includes alias targets and the default even when no step uses them, so a typo in an
        alias is caught before a long run starts.
        """
        found: dict[str, Position] = {}
        for candidates, at in self.model_references():
            for model in candidates:
                found.setdefault(model, at)
        return found


def _names(reference: ModelRef | None) -> tuple[str, ...]:
    if reference is None:
        return ()
    return (reference,) if isinstance(reference, str) else tuple(reference)


def strings_in(value: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, str]]:
    """Every string inside nested mappings and lists, with its path: the template fields of
    free-form values such as `with:` and `outputs:`."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from strings_in(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from strings_in(item, (*path, i))


def is_note(key: str) -> bool:
    """Keys starting with `x-` are the user's own annotations; lmflow ignores them."""
    return key.startswith("x-")


def _named(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in data.get(key, {}).items() if not is_note(name)}


def _server(name: str, data: Mapping[str, Any], workflow: Path) -> McpServer:
    timeout = float(data.get("timeout", DEFAULT_TOOL_CALL_TIMEOUT))
    max_result_chars = data.get("max_result_chars", DEFAULT_MAX_RESULT_CHARS)
    startup: dict[str, Any] = (
        {"startup_timeout": float(data["startup_timeout"])} if "startup_timeout" in data else {}
    )
    client = _client_settings(data)
    if "from" in data:  # declared for other MCP clients; this file sets only the limits
        from .server_files import imported_server

        imported = imported_server(data["from"], data.get("name", name), workflow)
        return replace(
            imported,
            name=name,
            timeout=timeout,
            max_result_chars=max_result_chars,
            startup_timeout=startup.get("startup_timeout", imported.startup_timeout),
            max_concurrent_calls=data.get("max_concurrent_calls"),
            **client,
        )
    if "url" in data:
        return HttpServer(
            name,
            data["url"],
            frozen(data.get("headers", {})),
            timeout,
            max_result_chars=max_result_chars,
            **startup,
            max_concurrent_calls=data.get("max_concurrent_calls"),
            **client,
            max_message_bytes=data.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            oauth=_oauth(data.get("oauth", False)),
        )
    return StdioServer(
        name,
        data["command"],
        tuple(data.get("args", ())),
        frozen(data.get("env", {})),
        data.get("cwd"),
        timeout,
        max_result_chars=max_result_chars,
        **startup,
        max_concurrent_calls=data.get("max_concurrent_calls"),
        **client,
    )


def _client_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings for what a server may ask of lmflow, common to stdio and HTTP."""
    elicitation = data.get("elicitation", "decline")
    answers = elicitation.get("answers", {}) if isinstance(elicitation, Mapping) else {}
    return {
        "progress_extends_timeout": data.get("progress_extends_timeout", True),
        "roots": tuple(data.get("roots", ())),
        "elicitation": "answers" if isinstance(elicitation, Mapping) else elicitation,
        "elicitation_answers": frozen(answers),
        "sampling": _sampling(data.get("sampling", False)),
    }


def _sampling(value: bool | Mapping[str, Any]) -> Sampling | None:
    if value is True:
        return Sampling()
    if not isinstance(value, Mapping):
        return None
    return Sampling(
        value.get("model"),
        value.get("max_requests", DEFAULT_SAMPLING_REQUESTS),
        value.get("max_tokens", DEFAULT_SAMPLING_TOKENS),
    )


def _oauth(value: bool | Mapping[str, Any]) -> OAuth | None:
    if value is True:
        return OAuth()
    if not isinstance(value, Mapping):
        return None
    known = {setting.name for setting in fields(OAuth)}
    settings = {key: item for key, item in value.items() if key in known}
    if "login_timeout" in settings:
        settings["login_timeout"] = float(settings["login_timeout"])
    return OAuth(**settings)


def _allow_list(value: Sequence[str] | Mapping[str, Any]) -> tuple[str, ...] | ToolFilter:
    if isinstance(value, Mapping):
        return ToolFilter(read_only=bool(value.get("read_only", False)))
    return tuple(value)


def _input(name: str, data: Mapping[str, Any]) -> Input:
    has_default = "default" in data
    return Input(
        name=name,
        type=data["type"],
        description=data.get("description"),
        default=frozen(data.get("default")),
        has_default=has_default,
        enum=frozen(data["enum"]) if "enum" in data else None,
        minimum=data.get("minimum"),
        maximum=data.get("maximum"),
        required=data.get("required", not has_default),
    )


StepData = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""A step's data as written -> with its prompt files read and its agent merged in."""


def _step(index: int, data: Mapping[str, Any], prepare: StepData, workflow: Path) -> Step:
    needs = data.get("needs", ())
    for_each = data.get("for_each")
    common: dict[str, Any] = dict(
        id=data["id"],
        index=index,
        name=data.get("name"),
        needs=(needs,) if isinstance(needs, str) else tuple(needs),
        if_=data.get("if"),
        timeout=data.get("timeout"),
        continue_on_error=data.get("continue_on_error", False),
        for_each=frozen(for_each),
        concurrency=data.get("concurrency"),
    )
    if "tool" in data:
        return ToolStep(**common, tool=data["tool"], with_=frozen(data.get("with", {})))
    if "loop" in data:
        loop = data["loop"]
        return LoopStep(
            **common,
            loop=Loop(
                max=loop["max"],
                until=loop["until"],
                steps=tuple(
                    _step(i, prepare(s), prepare, workflow) for i, s in enumerate(loop["steps"])
                ),
                on_max=loop.get("on_max", "fail"),
            ),
        )
    if "workflow" in data:
        return WorkflowStep(
            **common,
            workflow=data["workflow"],
            with_=frozen(data.get("with", {})),
            child=_child(workflow, data["workflow"]),
        )
    if "ask" in data:
        return AskStep(
            **common,
            ask=data["ask"],
            type=data.get("type", "string"),
            choices=tuple(data.get("choices", ())),
            default=data.get("default"),
            has_default="default" in data,
        )
    if "embed" in data:
        text = data["embed"]
        return EmbedStep(
            **common,
            embed=text if isinstance(text, str) else frozen(text),
            model=frozen(data["model"]),
            batch_size=data.get("batch_size", DEFAULT_EMBED_BATCH),
        )
    if "run" in data:
        run = data["run"]
        return CommandStep(
            **common,
            run=run if isinstance(run, str) else tuple(run),
            shell=data.get("shell", False),
            cwd=data.get("cwd"),
            env=frozen(data.get("env", {})),
            ok_codes=tuple(data.get("ok_codes", (0,))),
            max_output_chars=data.get("max_output_chars", DEFAULT_MAX_RESULT_CHARS),
        )
    schema = data.get("output_schema")
    return AgentStep(
        **common,
        model=frozen(data.get("model")),
        system=data.get("system"),
        prompt=data.get("prompt"),
        system_from=frozen(data["system_from"]) if "system_from" in data else None,
        prompt_from=frozen(data["prompt_from"]) if "prompt_from" in data else None,
        images=tuple(data.get("images", ())),
        mcp=tuple(data.get("mcp", ())),
        tools=_allow_list(data["tools"]) if "tools" in data else None,
        output_schema=frozen(schema) if schema is not None else None,
        max_rounds=data.get("max_rounds"),
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        tool_choice=data.get("tool_choice"),
        max_result_chars=data.get("max_result_chars"),
        continue_=data.get("continue"),
    )


def included_path(name: str, workflow: Path) -> Path:
    """Where a `workflow:` step's file is: relative to the including file's directory."""
    return workflow.parent / name


def _child(workflow: Path, name: str) -> Workflow:
    """The workflow a `workflow:` step includes. The including file's validation already
    validated it (recursively, cycles refused), so it is read and built without checks."""
    path = included_path(name, workflow)
    doc = read_document(path)
    return build_workflow(path, doc.data, doc.source)


def build_workflow(path: Path, data: Mapping[str, Any], source: SourceMap) -> Workflow:
    """Turn validated data into a Workflow. Call only after validation found no errors."""
    lmstudio = data.get("lmstudio", {})
    defaults = data.get("defaults", {})

    def read(_key: str, file: Path) -> str:
        return read_text(file)

    agents = {name: with_file_texts(a, path, read) for name, a in _named(data, "agents").items()}

    def prepare(step: Mapping[str, Any]) -> Mapping[str, Any]:
        return with_agent(with_file_texts(step, path, read), agents)

    return Workflow(
        path=path,
        name=data.get("name") or path.stem,
        version=data["version"],
        description=data.get("description"),
        lmstudio=LMStudioSettings(
            base_url=lmstudio.get("base_url"),
            hosts=tuple(lmstudio.get("hosts", ())),
            token_env=lmstudio.get("token_env", DEFAULT_TOKEN_ENV),
            timeout=lmstudio.get("timeout"),
        ),
        models=frozen(_named(data, "models")),
        defaults=Defaults(
            model=frozen(defaults.get("model")),
            max_rounds=defaults.get("max_rounds", DEFAULT_MAX_ROUNDS),
            temperature=defaults.get("temperature"),
            max_tokens=defaults.get("max_tokens"),
            timeout=defaults.get("timeout"),
            tool_choice=defaults.get("tool_choice"),
            concurrency=defaults.get("concurrency", DEFAULT_CONCURRENCY),
            fail_fast=defaults.get("fail_fast", False),
        ),
        inputs=MappingProxyType(
            {name: _input(name, spec) for name, spec in _named(data, "inputs").items()}
        ),
        mcp_servers=MappingProxyType(
            {name: _server(name, spec, path) for name, spec in _named(data, "mcp_servers").items()}
        ),
        agents=frozen(agents),
        steps=tuple(_step(i, prepare(s), prepare, path) for i, s in enumerate(data["steps"])),
        outputs=frozen(_named(data, "outputs")),
        source=source,
    )
