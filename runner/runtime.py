"""Assembles a live run: LM Studio client, model check, MCP servers, run log files.

The executor runs steps; this module gives it its parts and makes sure they are closed:
one HTTP connection pool for the whole run, every MCP server started once before the first
step and stopped when the run ends, whatever way it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio

from .ask_step import Answers, Asker, parse_answers
from .chat import ChatModel, Usage
from .errors import ConfigurationError, LmflowError, ToolStepsInvalidError
from .executor import (
    Executor,
    RunResult,
    ToolProvider,
    base_context,
    coerce_inputs,
    render_servers,
    servers_in_use,
)
from .history import RUNS_DIR, find_run
from .limits import LimitedTools, limit_calls
from .resume import Reusable, load_reusable
from .runlog import JsonlWriter, Redactor, RunLog, SecretEnv, Sink, new_run_id, write_json
from .signals import stop_reason
from .spec.load import read_document
from .spec.model import (
    EMPTY,
    AgentStep,
    EmbedStep,
    HttpServer,
    Input,
    LMStudioSettings,
    McpServer,
    StdioServer,
    Workflow,
    frozen,
    step_at,
    walk_steps,
)
from .spec.problems import Problem
from .subworkflow import family_contexts, run_servers
from .toolcheck import CheckedToolSteps, ensure_tool_steps

if TYPE_CHECKING:
    from anyio.abc import Process

    from .dryrun import DryStep
    from .lmstudio import LMStudioClient
    from .mcp import McpSessions, ToolSource
    from .replay import Replayer
    from .shared_servers import SharedServers


@dataclass(frozen=True)
class RunOptions:
    """How to run: where the server is, what to check first, where the log goes."""

    base_url: str | None = None
    runs_dir: Path = RUNS_DIR
    log_path: Path | None = None
    write_log: bool = True
    require_loaded: bool = False
    load: bool = False
    refresh: bool = False
    cache_ttl: float | None = None
    sinks: tuple[Sink, ...] = field(default_factory=tuple)
    record: Path | None = None
    replay: Path | None = None
    rerecord: bool = False
    live_tools: bool = False
    resume: str | None = None
    """A run id (or `last`) whose succeeded steps this run reuses where unchanged."""
    stop_reason: Callable[[], str | None] | None = None
    """Asked when the run is cancelled: why, in the log's words, when the caller knows
    better than "interrupted" (`lmflow serve`: the MCP client cancelled the call)."""
    servers: SharedServers | None = None
    """MCP servers already started for many runs (`api.open_servers`): the run uses them
    instead of starting its own."""
    file_host: str | None = None
    """A server from the workflow's own `lmstudio.hosts` (`lmflow batch`): it stands in for
    `lmstudio.base_url`, so the token goes there only under the trust rule (docs/lmstudio.md)."""

    def lmstudio(self, workflow: Workflow) -> LMStudioSettings:
        """The workflow's `lmstudio:` as this run reads it (`file_host` in place of
        `base_url`)."""
        if self.file_host is None:
            return workflow.lmstudio
        return replace(workflow.lmstudio, base_url=self.file_host)

    answers: Mapping[str, Any] = field(default_factory=dict)
    """Answers to `ask:` steps by step id (`--answer STEP=VALUE`): text typed by the step,
    or typed values."""
    asker: Asker | None = None
    """Who asks a person the `ask:` steps no answer was given for (the terminal, an MCP
    client); None: the steps' defaults, else the run is refused (exit 2)."""

    def __post_init__(self) -> None:
        if self.record is not None and self.replay is not None:
            raise ConfigurationError("--record and --replay exclude each other")
        if self.rerecord and self.record is None:
            raise ConfigurationError("--rerecord needs --record CASSETTE")
        if self.live_tools and self.replay is None:
            raise ConfigurationError("--live-tools needs --replay CASSETTE")
        if self.log_path is not None and not self.write_log:
            raise ConfigurationError("--log and --no-log exclude each other")
        if self.replay is not None:
            # A replay never talks to LM Studio: options about it would be silently ignored.
            ignored = [
                flag
                for flag, given in (
                    ("--base-url", self.base_url is not None),
                    ("--require-loaded", self.require_loaded),
                    ("--load", self.load),
                    ("--refresh", self.refresh),
                    ("--cache-ttl", self.cache_ttl is not None),
                )
                if given
            ]
            if ignored:
                raise ConfigurationError(
                    f"{', '.join(ignored)} cannot be used with --replay",
                    hint="a replay answers from the cassette and never asks LM Studio",
                )


@dataclass
class PreparedRun:
    """Everything a run has before its first step: ids, log, template context."""

    workflow: Workflow
    inputs: dict[str, Any]
    run_id: str
    run_dir: Path
    log: RunLog
    context: dict[str, Any]
    writer: JsonlWriter | None
    replayed_from: Path | None = None
    """The cassette the run answers from (`--replay`), kept in result.json for `runs list`."""
    stop_reason: Callable[[], str | None] | None = None
    """`RunOptions.stop_reason`."""
    answers: Answers = field(default_factory=Answers)
    """Where the `ask:` steps' answers come from (a replay adds its cassette's)."""


def prepare(
    workflow: Workflow,
    raw_inputs: Mapping[str, Any],
    options: RunOptions,
    answers: Answers | None = None,
) -> PreparedRun:
    """Check the inputs (exit 2 on a bad one) and open the run log."""
    from .lmstudio_server import base_url_candidates

    inputs = coerce_inputs(workflow, raw_inputs)
    run_id = new_run_id()
    run_dir = options.runs_dir.resolve() / run_id  # absolute: servers run elsewhere
    redactor = Redactor()
    log = RunLog(run_id, redactor)
    writer = None
    if options.write_log:
        writer = JsonlWriter(options.log_path or run_dir / "events.jsonl")
        log.subscribe(writer)
    for sink in options.sinks:
        log.subscribe(sink)
    # Secrets are known before the first event: the variables the templates name (only
    # those reach the templates) and any password in a server URL, valid or not.
    env = SecretEnv(sorted(workflow.plan.env_names), redactor)
    for url, _ in base_url_candidates(options.base_url, options.lmstudio(workflow).base_url):
        redactor.add_url_password(url)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    context = base_context(workflow, inputs, env, run_id, run_dir, started_at)
    return PreparedRun(
        workflow,
        inputs,
        run_id,
        run_dir,
        log,
        context,
        writer,
        options.replay,
        options.stop_reason,
        answers or Answers(),
    )


@contextlib.asynccontextmanager
async def live_parts(
    run: PreparedRun, options: RunOptions
) -> AsyncIterator[tuple[ChatModel, ToolProvider | None]]:
    """LM Studio (models checked) and the workflow's MCP servers (allow-lists checked). A
    run whose steps use no server gets no tool provider, and does not import the MCP SDK
    (half a second or more)."""
    if options.servers is not None:
        async with live_model(run, options) as chat, shared_tools(run, options.servers) as kept:
            yield chat, kept
        return
    servers = run_servers(run.workflow, run.context)
    async with contextlib.AsyncExitStack() as stack:
        started = await stack.enter_async_context(early_servers(servers))
        chat = await stack.enter_async_context(live_model(run, options))
        tools = (
            await stack.enter_async_context(live_tools(run, servers, started, chat))
            if servers
            else None
        )
        yield chat, tools


@contextlib.asynccontextmanager
async def early_servers(servers: Mapping[str, McpServer]) -> AsyncIterator[dict[str, Process]]:
    """The stdio servers spawned now, before the MCP SDK is imported and the models are
    checked, so that their own start-up overlaps ours. A server that cannot be spawned is
    left for the sessions to start and report. Whatever was spawned is stopped on the way
    out: by the sessions normally, here when the run ends before they took it over."""
    from . import processes

    started: dict[str, Process] = {}
    try:
        for name, server in servers.items():
            if isinstance(server, StdioServer):
                with contextlib.suppress(OSError):
                    started[name] = await processes.spawn_server(server)
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for process in started.values():
                await processes.stop_tree(process.pid, 0)


@contextlib.asynccontextmanager
async def shared_tools(run: PreparedRun, shared: SharedServers) -> AsyncIterator[LimitedTools]:
    """Servers started before the run (`RunOptions.servers`), checked as its own would be;
    left running when the run ends."""
    shared.check_for(run.workflow)
    check_tools(run, shared.tools)
    yield shared.tools


def tools_for(
    run: PreparedRun, options: RunOptions, chat: ChatModel
) -> contextlib.AbstractAsyncContextManager[ToolSource]:
    """The run's MCP servers: the shared ones it was handed, or its own, started now."""
    if options.servers is not None:
        return shared_tools(run, options.servers)
    return live_tools(run, chat=chat)


@contextlib.asynccontextmanager
async def live_model(run: PreparedRun, options: RunOptions) -> AsyncIterator[LMStudioClient]:
    """The LM Studio client, once every model the workflow uses is checked."""
    from .catalog import model_cache_ttl
    from .lmstudio import LMStudioClient
    from .lmstudio_server import resolve_server
    from .preflight import verify_models

    server = resolve_server(options.base_url, options.lmstudio(run.workflow))
    run.log.redactor.add(server.token)
    if server.withheld is not None:
        where = run.workflow.source.position(("lmstudio", "base_url"))
        run.log.emit(
            "notice",
            rule="token-not-sent",
            message=server.withheld.message,
            hint=server.withheld.hint,
            line=where.line,
        )
    # Streamed, so each answer records time to first token and tokens per second.
    async with LMStudioClient.from_config(server, stream=True) as client:
        if not asks_models(run.workflow):
            yield client  # no model or embed step: no model to check, LM Studio need not run
            return
        started = time.monotonic()
        run.log.emit("phase_started", phase="models")
        warnings = await verify_models(
            run.workflow,
            server,
            ttl=model_cache_ttl(options.cache_ttl),
            refresh=options.refresh,
            require_loaded=options.require_loaded,
            load=options.load,
            client=client,
        )
        run.log.emit("phase_finished", phase="models", duration=_since(started))
        for problem in warnings:
            run.log.emit(
                "notice",
                rule=problem.rule,
                message=problem.message,
                hint=problem.hint,
                line=problem.line,
            )
        for model_id, seconds in client.loaded.items():
            message = f"model {model_id!r} loaded in {seconds:g} s (--load)"
            run.log.emit("notice", rule="model-loaded", message=message, hint=None, line=None)
        yield client


@contextlib.asynccontextmanager
async def live_tools(
    run: PreparedRun,
    servers: Mapping[str, McpServer] | None = None,
    started: Mapping[str, Process] | None = None,
    chat: ChatModel | None = None,
) -> AsyncIterator[McpSessions]:
    """The MCP servers the steps use (rendered now unless given), started once or attached
    to the processes `started` for them, checked against the workflow (`check_against_servers`;
    its warnings are notices). `chat` answers the servers that may sample."""
    async with started_servers(run, servers, started, chat) as sessions:
        for warning in await check_against_servers(run, sessions):
            run.log.emit(
                "notice",
                rule=warning.rule,
                message=warning.message,
                hint=warning.hint,
                line=warning.line,
            )
        yield sessions


@contextlib.asynccontextmanager
async def started_servers(
    run: PreparedRun,
    servers: Mapping[str, McpServer] | None = None,
    started: Mapping[str, Process] | None = None,
    chat: ChatModel | None = None,
) -> AsyncIterator[McpSessions]:
    """The sessions of `live_tools`, before any check."""
    from .mcp import McpSessions
    from .mcp_oauth import OAuthRun

    if servers is None:
        servers = run_servers(run.workflow, run.context)
    # With --no-log nothing lands in the run directory; stderr goes to a temporary one.
    log_dir = run.run_dir if run.writer is not None else None
    # The redactor knows every `env` value the servers hold: SecretEnv told it (prepare).
    since = time.monotonic()
    for name in servers:
        run.log.emit("phase_started", phase="server", name=name)

    def ready(name: str) -> None:
        run.log.emit("phase_finished", phase="server", name=name, duration=_since(since))

    async with McpSessions(
        servers,
        log_dir=log_dir,
        redact=run.log.redactor.text,
        started=started,
        emit=run.log.emit,
        workflow_dir=run.workflow.path.resolve().parent,
        chat=chat,
        model_for=partial(sampling_model, run.workflow),
        on_ready=ready,
        oauth=OAuthRun(run.workflow.path, on_secret=run.log.redactor.add),
    ) as sessions:
        yield sessions


async def check_against_servers(run: PreparedRun, sessions: McpSessions) -> list[Problem]:
    """The allow-lists, the tool steps and the server prompts of the workflow and of every
    workflow it includes, checked against what the servers offer (raises MCPServerError or
    ToolStepsInvalidError, exit 3); the warnings their tool lists give (runner/writers.py)."""
    from .promptcheck import check_server_prompts, prompt_servers
    from .writers import shared_writer_warnings

    warnings: list[Problem] = []
    for member, context in family_contexts(run.workflow, run.context):
        check_allow_lists(member, sessions)
        warnings += shared_writer_warnings(member, sessions)
        prompts = {name: await sessions.prompts(name) for name in prompt_servers(member)}
        prompt_problems = check_server_prompts(member, prompts.__getitem__)
        ensure_tool_steps(member, sessions.tools, context, more=prompt_problems)
    return warnings


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def parts_for(
    run: PreparedRun, options: RunOptions
) -> contextlib.AbstractAsyncContextManager[tuple[ChatModel, ToolProvider | None]]:
    """Live parts, live parts recorded into a cassette, or a cassette's answers."""
    if options.replay is not None:
        return _replay_parts(run, options.replay, options.live_tools)
    if options.record is not None:
        return _recording_parts(run, options)
    return live_parts(run, options)


@contextlib.asynccontextmanager
async def _recording_parts(
    run: PreparedRun, options: RunOptions
) -> AsyncIterator[tuple[ChatModel, ToolProvider]]:
    """Live parts whose exchanges go into the cassette when the steps have run (succeeded or
    failed: a failure replays too). An interrupted run, or one whose environment was not
    ready, leaves any existing cassette as it was."""
    from .replay import Recorder

    assert options.record is not None
    recorder = Recorder(run.workflow.name, run.log, run.context, run.workflow.plan.order())
    async with live_model(run, options) as chat:
        recorded = recorder.chat(chat)  # the servers' sampling requests are recorded too
        async with tools_for(run, options, recorded) as sessions:
            yield recorded, recorder.tools(sessions, list(run_servers(run.workflow, run.context)))
    recorder.cassette().save(options.record)


@contextlib.asynccontextmanager
async def _replay_parts(
    run: PreparedRun, cassette_path: Path, use_live_tools: bool
) -> AsyncIterator[tuple[ChatModel, ToolProvider]]:
    """The cassette's answers, and its tools unless `use_live_tools`. No LM Studio is
    contacted, so models are not checked: a changed model shows up as a replay miss."""
    from .replay import Cassette, Replayer

    # Tool results' images go where the recorded run's tools saved them (named in their text).
    content_dir = run.run_dir / "mcp-content" if run.writer is not None else None
    replayer = Replayer(Cassette.load(cassette_path), run.log, run.context, content_dir)
    run.answers.recorded = replayer  # a replay asks nobody: the cassette answers
    if use_live_tools:
        async with live_tools(run, chat=replayer) as sessions:
            yield replayer, sessions
    else:
        check_tools(run, replayer)
        yield replayer, replayer
    # A miss inside a step failed that step; the run as a whole says the environment (the
    # cassette) was not ready for it: exit code 3.
    if replayer.first_miss is not None:
        raise replayer.first_miss


def asks_models(workflow: Workflow) -> bool:
    """Whether a run may ask a model anything: a model or embed step (loop bodies
    included), or a server that may sample, in the workflow or one it includes."""
    return any(
        isinstance(step, (AgentStep, EmbedStep))
        for member in workflow.family()
        for _, step in walk_steps(member.steps)
    ) or any(
        member.mcp_servers[name].sampling is not None
        for member in workflow.family()
        for name in servers_in_use(member)
    )


def sampling_model(workflow: Workflow, named: str | None, step_id: str | None) -> str | None:
    """The model that answers a server's sampling request made during a call of `step_id`:
    the one its entry `named`, else the step's model, else `defaults.model` (also for a
    `tool:` step)."""
    if named is not None:
        return workflow.resolve_model(named)
    found = step_at(workflow, step_id) if step_id is not None else None
    if found is None:
        return workflow.resolve_model(workflow.defaults.model)
    owner, step = found  # a nested step's own file says which model it means
    return owner.step_model(step) or owner.resolve_model(owner.defaults.model)


def check_tools(run: PreparedRun, tools: McpSessions | Replayer | LimitedTools) -> None:
    """The allow-lists and tool steps of the workflow and of every workflow it includes,
    checked against the servers' tool lists before the first step."""
    for member, context in family_contexts(run.workflow, run.context):
        check_allow_lists(member, tools)
        ensure_tool_steps(member, tools.tools, context)


def check_allow_lists(workflow: Workflow, tools: ToolProvider) -> None:
    """Build every step's toolbox once up front: a `tools:` entry no server offers stops the
    run before its first step (MCPServerError, exit 3)."""
    for _, step in walk_steps(workflow.steps):
        if isinstance(step, AgentStep) and step.mcp:
            tools.toolbox(step.mcp, step.tools)


async def execute(
    run: PreparedRun,
    parts: contextlib.AbstractAsyncContextManager[tuple[ChatModel, ToolProvider | None]],
    reuse: Reusable | None = None,
) -> RunResult:
    """Run the steps with the given parts. The run's start and end are told here, once: the
    last event and result.json give the same status, however the run ended."""
    started = time.monotonic()
    executor: Executor | None = None
    ending: tuple[str, str] | None = None  # (status, error) when the run did not finish
    try:
        run.log.emit(
            "run_started",
            workflow=run.workflow.name,
            path=str(run.workflow.path),
            inputs=run.inputs,
            steps=run.workflow.plan.order(),
        )
        async with parts as (chat, tools):
            executor = Executor(
                run.workflow,
                run.inputs,
                chat=chat,
                tools=(
                    CheckedToolSteps(limit_calls(run.workflow, tools))
                    if tools is not None
                    else None
                ),
                log=run.log,
                context=run.context,
                reuse=reuse,
                answers=run.answers,
            )
            await executor.run()
    except LmflowError as error:
        # The environment was not ready, or the parts refused a finished run (a replay that
        # missed a request): exit 3, with whatever steps ran.
        ending = ("error", error.message)
        raise
    except (KeyboardInterrupt, asyncio.CancelledError) as error:
        told = run.stop_reason() if run.stop_reason is not None else None
        ending = ("interrupted", told or stop_reason(error))
        raise
    except BaseException as error:
        ending = ("error", f"{type(error).__name__}: {error}")
        raise
    finally:
        result = executor.result if executor is not None else None
        _finish(run, result, ending, time.monotonic() - started)
    assert result is not None
    return result


def _finish(
    run: PreparedRun,
    result: RunResult | None,
    ending: tuple[str, str] | None,
    duration: float,
) -> None:
    """The one `run_finished` event and result.json, then the log is closed."""
    payload = result.as_dict() if result is not None else {"outputs": {}, "steps": []}
    if ending is not None:
        payload["status"], payload["error"] = ending
    payload["duration"] = round(duration, 3)
    run.log.emit(
        "run_finished",
        status=payload["status"],
        outputs=payload["outputs"],
        error=payload.get("error"),
        duration=payload["duration"],
        usage=payload.get("usage", Usage().as_dict()),
    )
    if result is not None and ending is not None:
        result.status, result.error = ending  # type: ignore[assignment]
    _write_result(run, payload)
    if run.writer is not None:
        run.writer.close()


def _write_result(run: PreparedRun, payload: Mapping[str, Any]) -> None:
    if run.writer is None:
        return
    base = {
        "run_id": run.run_id,
        "workflow": run.workflow.name,
        "path": str(run.workflow.path),
        "inputs": run.inputs,
    }
    if run.replayed_from is not None:
        base["replayed_from"] = str(run.replayed_from)
    write_json(run.run_dir / "result.json", run.log.redactor({**base, **payload}))


async def run_workflow(
    workflow: Workflow, raw_inputs: Mapping[str, Any], options: RunOptions
) -> RunResult:
    """Run a workflow against LM Studio and its MCP servers, recording a cassette, or
    replaying one (`options.record` / `options.replay`)."""
    run, reuse = begin(workflow, raw_inputs, options)
    return await execute(run, parts_for(run, options), reuse)


def begin(
    workflow: Workflow, raw_inputs: Mapping[str, Any], options: RunOptions
) -> tuple[PreparedRun, Reusable | None]:
    """Everything a run does before its first event: the cassette checked, the run to resume
    read, the inputs checked and the log opened. Callers that need the prepared run (its
    directory, its start time) go on with `execute`."""
    if options.record is not None:
        from .replay import ensure_recordable

        # Before the run starts: a cassette that cannot be written is a command-line mistake.
        ensure_recordable(options.record, options.rerecord)
    answers = Answers(parse_answers(workflow, options.answers), options.asker)
    if options.replay is None and options.resume is None:
        # A replay's cassette answers, a resumed run's earlier answers may be reused: a
        # question left over fails its step instead.
        answers.check_answerable(workflow)
    reuse = None
    if options.resume is not None:  # before this run's own directory exists: `last` is earlier
        reuse = load_reusable(find_run(options.runs_dir, options.resume))
    return prepare(workflow, raw_inputs, options, answers), reuse


def read_inputs(inputs_file: Path | None, pairs: Iterable[str]) -> dict[str, Any]:
    """Inputs from `--inputs FILE` (YAML or JSON), then `-i key=value` pairs over them."""
    values: dict[str, Any] = {}
    if inputs_file is not None:
        values.update(_inputs_file(inputs_file))
    values.update(key_values(pairs, "input", "key=value", "write -i name=value, e.g. -i path=src"))
    return values


def key_values(pairs: Iterable[str], option: str, form: str, hint: str) -> dict[str, str]:
    """Command-line `KEY=VALUE` pairs by key (the last one wins); a pair without `=` or
    without a key is exit 2, `hint` saying how to write one."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{option} {pair!r} is not {form}", hint=hint)
        values[key.strip()] = value
    return values


def _inputs_file(path: Path) -> dict[str, Any]:
    """An inputs file through the workflow loader: the same limits, dates kept as text, and
    every problem with its file:line:col (exit 2)."""
    doc = read_document(path, max_bytes=None)
    if any(problem.rule == "empty-file" for problem in doc.problems):
        return {}
    if doc.problems:
        first = doc.problems[0]
        raise ConfigurationError(f"{first.located} (--inputs file)", hint=first.hint)
    if not isinstance(doc.data, dict):
        raise ConfigurationError(
            f"inputs file {path} must hold a mapping of name: value, not {type(doc.data).__name__}",
            hint="write one `name: value` line per input",
        )
    return doc.data


def read_output_schema(path: Path) -> dict[str, Any]:
    """A JSON Schema file (JSON or YAML) for `lmflow agent --output-schema`, checked before
    anything runs: a broken file is the command line's fault (exit 2), with file:line:col."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    doc = read_document(path, max_bytes=None)
    if doc.problems:
        first = doc.problems[0]
        raise ConfigurationError(
            f"{first.located} (--output-schema file)",
            hint=first.hint
            or (
                "check the path of the --output-schema file"
                if first.rule == "unreadable"
                else "write the schema as a JSON object"
            ),
        )
    if not isinstance(doc.data, dict):
        raise ConfigurationError(
            f"{path}: --output-schema must hold a JSON Schema object, "
            f"not {type(doc.data).__name__}",
            hint='e.g. {"type": "object", "properties": {"answer": {"type": "string"}}}',
        )
    try:
        validator_for(doc.data).check_schema(doc.data)
    except SchemaError as error:
        where = doc.source.position(tuple(error.path))
        raise ConfigurationError(
            f"{path}:{where.line}:{where.col}: not a valid JSON Schema: {error.message}",
            hint="see https://json-schema.org/understanding-json-schema/",
        ) from None
    return doc.data


@dataclass(frozen=True)
class ToolInfo:
    """One tool as `lmflow tools` shows it: name, description and input schema."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


async def list_tools(
    workflow: Workflow, raw_inputs: Mapping[str, Any]
) -> dict[str, list[ToolInfo]]:
    """Start every declared server once and list its tools."""
    from .mcp import McpSessions
    from .mcp_oauth import OAuthRun

    run = prepare(workflow, raw_inputs, RunOptions(write_log=False))
    servers = render_servers(workflow, list(workflow.mcp_servers), run.context)
    async with McpSessions(
        servers,
        redact=run.log.redactor.text,
        workflow_dir=workflow.path.resolve().parent,
        oauth=OAuthRun(workflow.path, on_secret=run.log.redactor.add),
    ) as sessions:
        return {
            name: [
                ToolInfo(tool.name, tool.description or "", dict(tool.input_schema or {}))
                for tool in sessions.tools(name)
            ]
            for name in servers
        }


async def check_servers(workflow: Workflow, raw_inputs: Mapping[str, Any]) -> list[Problem]:
    """`lmflow validate --servers`: start the servers the steps use, check the allow-lists
    and the tool steps against their tool lists as a run would, and stop them again. A server
    that will not start or an allow-list entry no server offers raises (exit 3)."""
    run = prepare(workflow, raw_inputs, RunOptions(write_log=False))
    try:
        async with started_servers(run) as sessions:
            return await check_against_servers(run, sessions)
    except ToolStepsInvalidError as error:
        return [problem for problem in error.problems if isinstance(problem, Problem)]


def dry_run_workflow(workflow: Workflow, raw_inputs: Mapping[str, Any]) -> list[DryStep]:
    """`lmflow run --dry-run`: the inputs checked as for a run (exit 2 on a bad one), then
    each step's fields rendered; no model, no server, no run log."""
    from .dryrun import dry_run

    run = prepare(workflow, raw_inputs, RunOptions(write_log=False))
    return dry_run(workflow, run.context, run.log.redactor.text)


def one_off_workflow(
    task: str,
    *,
    model: str | None = None,
    servers: Mapping[str, McpServer] = EMPTY,
    use: Sequence[str] = (),
    system: str | None = None,
    max_rounds: int | None = None,
    base: Workflow | None = None,
    tool_choice: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    output_schema: Mapping[str, Any] | None = None,
) -> Workflow:
    """The one-step workflow `lmflow agent` runs (`api.agent_workflow`): a model does `task`
    with the tools of the servers named in `use` (declared in `servers` or in `base`, whose
    model aliases and LM Studio settings it also takes), with a step's settings; a one-off
    task goes through exactly the same checks, engine and run log as a workflow file."""
    base = base or Workflow(path=Path("agent.yaml"), name="agent")
    all_servers = {**base.mcp_servers, **servers}
    unknown = [name for name in use if name not in all_servers]
    if unknown:
        raise ConfigurationError(
            f"unknown MCP server(s): {', '.join(unknown)}",
            hint="declare them with --server name=command or take them from --from FILE "
            f"(known: {', '.join(all_servers) or 'none'})",
        )
    if model is None and base.defaults.model is None:
        raise ConfigurationError("no model given", hint="pass --model publisher/name")
    if tool_choice not in (None, "auto", "none") and not use:
        raise ConfigurationError(
            f"--tool-choice {tool_choice} forces a tool call, but no tools are offered",
            hint="name a server with --mcp (or declare one with --server)",
        )
    # The task and system prompt are the user's literal text, not templates: they travel as
    # inputs (recorded in the run log) and the step reads them from there.
    texts = {"task": task, **({"system": system} if system is not None else {})}
    step = AgentStep(
        id="agent",
        index=0,
        model=model,
        system="{{ inputs.system }}" if system is not None else None,
        prompt="{{ inputs.task }}",
        mcp=tuple(use),
        max_rounds=max_rounds,
        tool_choice=tool_choice,
        temperature=temperature,
        max_tokens=max_tokens,
        output_schema=frozen(output_schema) if output_schema is not None else None,
    )
    literal_inputs = {
        name: Input(name, "string", default=text, has_default=True, required=False)
        for name, text in texts.items()
    }
    return replace(
        base,
        name=f"{base.name}-agent" if base.steps else base.name,
        inputs=MappingProxyType({**base.inputs, **literal_inputs}),
        mcp_servers=MappingProxyType(all_servers),
        steps=(step,),
        outputs=MappingProxyType({"answer": "{{ steps.agent.output }}"}),
    )


def parse_server_option(value: str) -> tuple[str, StdioServer | HttpServer]:
    """`name=command args...` (stdio) or `name=http://host/mcp` (streamable HTTP)."""
    name, sep, spec = value.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ConfigurationError(
            f"--server {value!r} is not name=command",
            hint="e.g. --server time='python -m mcp_server_time'",
        )
    name = name.strip()
    if spec.strip().startswith(("http://", "https://")):
        return name, HttpServer(name, spec.strip())
    try:
        words = shlex.split(spec)
    except ValueError as error:
        raise ConfigurationError(
            f"--server {value!r}: {error}", hint="close the quotes around the command"
        ) from None
    return name, StdioServer(name, words[0], tuple(words[1:]))
