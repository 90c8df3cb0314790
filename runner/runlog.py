"""Run-log events: how a run is told to the terminal, to `events.jsonl`, and to snapshots.

Every part of a run reports through one `RunLog`; sinks (the JSONL file, the console
view, a test's list) subscribe to it. Secrets are masked before any sink sees an event, so
no writer can leak them by mistake.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from .errors import ConfigurationError
from .results import FULL_CONTENT

MASK = "***"
MIN_SECRET_LENGTH = 4


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run. `data` holds the type-specific fields."""

    type: str
    seq: int
    time: float
    run_id: str
    step: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    item: int | None = None
    """The index of the `for_each` item the event belongs to (None outside items)."""

    def as_dict(self) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds")
        head: dict[str, Any] = {
            "seq": self.seq,
            "type": self.type,
            "time": stamp,
            "run_id": self.run_id,
        }
        if self.step is not None:
            head["step"] = self.step
        if self.item is not None:
            head["item"] = self.item
        return {**head, **self.data}


@dataclass(frozen=True)
class Scope:
    """Where in a run some work happens: a step, and an item of its `for_each`."""

    step: str
    item: int | None = None


current_scope: ContextVar[Scope | None] = ContextVar("lmflow_scope", default=None)
"""Set by the executor in each step's and item's task, so parts that see only requests (a
recorder, a replayer) know which step and item a request belongs to, however many run."""


Sink = Callable[[Event], None]
StepEmit = Callable[[str, dict[str, Any]], None]


class Redactor:
    """Masks every known secret value wherever it appears in event data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in self._secrets:
            self._secrets.add(secret)
            ordered = sorted(self._secrets, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def add_url_password(self, url: str | None) -> None:
        """The password of `scheme://user:password@host` as written and percent-decoded."""
        password = url_password(url or "")
        if password:
            self.add(password)
            self.add(unquote(password))

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern else value

    def __call__(self, value: Any) -> Any:
        return value if self._pattern is None else map_strings(value, self.text)


_URL_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://[^/?#]*?:)([^/?#]*)(@[^/?#@]*)", re.IGNORECASE)
"""`scheme://user:` `password` `@host`: the userinfo ends at the last `@` of the authority,
as httpx reads it. Tolerant: it also finds the password in a URL that is not valid."""


def url_password(url: str) -> str | None:
    match = _URL_USERINFO.match(url.strip())
    return match[2] if match and match[2] else None


def mask_url_password(url: str) -> str:
    """`url` with its password masked, for messages about a URL that may be invalid."""
    return _URL_USERINFO.sub(lambda m: m[1] + MASK + m[3] if m[2] else m[0], url)


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """A copy of JSON-like data with `change` applied to every string, mapping keys too."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {change(str(k)): map_strings(v, change) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(v, change) for v in value]
    return value


class SecretEnv:
    """The `env` template context: only the variables the workflow names statically
    (`env.NAME`, `env["NAME"]`), each value a secret to mask from the first event on.

    It has no methods and cannot be iterated, so `env.items()`, `env | list` or a loop
    reveal nothing even in a workflow the validator never saw (one built in Python): `env.X`
    reads the variable X and nothing else.
    """

    def __init__(
        self, names: Iterable[str], redactor: Redactor, environ: Mapping[str, str] | None = None
    ) -> None:
        environ = os.environ if environ is None else environ
        self._values = {name: environ[name] for name in names if name in environ}
        for value in self._values.values():
            redactor.add(value)

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    __iter__ = None  # not iterable: list(env) raises TypeError instead of trying env[0], ...


def new_run_id() -> str:
    """Sortable by start time to the millisecond (the first 3 hex digits of the suffix), so
    `last` is the newest run also when two start within a second; unique across processes."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03x}" + uuid.uuid4().hex[:3]


class RunLog:
    """The event bus of one run: numbers events, masks secrets, hands them to every sink."""

    def __init__(self, run_id: str, redactor: Redactor | None = None) -> None:
        self.run_id = run_id
        self.redactor = redactor or Redactor()
        self._sinks: list[Sink] = []
        self._seq = 0

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def emit(
        self, type: str, step: str | None = None, *, item: int | None = None, **data: Any
    ) -> Event:
        self._seq += 1
        event = Event(type, self._seq, time.time(), self.run_id, step, self.redactor(data), item)
        for sink in self._sinks:
            sink(event)
        return event

    def for_step(self, step: str, item: int | None = None) -> StepEmit:
        """The `emit` callback the agent engine gets: it knows events, not steps."""

        def emit(type: str, fields: dict[str, Any]) -> None:
            self.emit(type, step, item=item, **fields)

        return emit


class JsonlWriter:
    """Writes each event as one JSON line and flushes it, so a crashed run keeps its log.

    An existing file is appended to, never overwritten: `--log FILE` twice keeps both runs.
    A cut tool result's whole text (`full_content`) goes to the file its event names
    (`full_result`, relative to the log's directory) instead of into the line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = path.open("a", encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(
                f"cannot write the run log to {path}: {error.strerror or error}",
                hint="choose another --log file, or --no-log",
            ) from None

    def __call__(self, event: Event) -> None:
        line = event.as_dict()
        whole = line.pop(FULL_CONTENT, None)
        if isinstance(whole, str):
            target = self.path.parent / line["full_result"]
            if not target.exists():  # named by its content: an existing one is this one
                write_atomic(target, whole)
        self._file.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step: a reader sees the old file or the new one, never half of
    one, and a failed write leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


# --- the snapshot view ----------------------------------------------------------------------

VOLATILE_KEYS = frozenset(
    {"seq", "time", "run_id", "duration", "fingerprint", "reused_from", "served"}
)
"""`served` (llm_response): which model answered, in what form, how fast: this machine's facts."""
KEPT_ELSEWHERE = frozenset({FULL_CONTENT})
"""Fields a log line never holds (the event's `full_result` file does), left out of the view
so a snapshot is the same whether it was taken from a file or from memory."""
TOLD_ELSEWHERE = frozenset({"conversation"})
"""`conversation` (the `step_finished` of a step a later one continues): the step's own
`llm_request` and `llm_response` events already tell it, message by message."""
_NOT_IN_VIEW = VOLATILE_KEYS | KEPT_ELSEWHERE | TOLD_ELSEWHERE
MACHINE_EVENTS = frozenset(
    {"notice", "phase_started", "phase_finished"}
    | {"mcp_progress", "mcp_log", "mcp_elicitation", "mcp_sampling"}
)
"""Events about this machine (a model not loaded, the start-up of models and servers) or
about what live MCP servers said on their own (progress, log messages, questions: how many,
and when, depends on timing), not about the exchanges: a replay, which checks no models and
may run no servers, must give the same view as the run it replays."""
DIRECT_CALL_ID = "direct"
"""The id of the tool call of a `tool:` step: fixed already, so it is never renumbered."""


def renumber_ids(messages: Sequence[Mapping[str, Any]], ids: dict[str, str]) -> list[Any]:
    """Tool-call ids as call-1, call-2, ... in order of first appearance (`ids` is updated),
    in each message's `tool_calls` and `tool_call_id`. Snapshots and cassettes share it."""

    def new(call_id: Any) -> Any:
        if not isinstance(call_id, str):
            return call_id
        return ids.setdefault(call_id, f"call-{len(ids) + 1}")

    renumbered = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {**call, "id": new(call.get("id"))} if isinstance(call, Mapping) else call
                for call in message["tool_calls"]
            ]
        if "tool_call_id" in message:
            message["tool_call_id"] = new(message["tool_call_id"])
        renumbered.append(message)
    return renumbered


def snapshot_view(
    events: Iterable[Mapping[str, Any]], placeholders: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The events without what changes from run to run, for a byte-stable snapshot.

    Drops timestamps, durations, sequence numbers and run ids; renumbers tool-call ids in
    order of appearance; replaces absolute paths (`placeholders`: path -> `<name>`) so the
    same exchanges give the same view on any machine, whatever the timing. The vectors of
    `embed:` steps are summarised (`<3 vectors of 384>`): numbers nobody reads in review.
    """
    events = _in_run_order([event for event in events if event.get("type") not in MACHINE_EVENTS])
    embedding = {
        e.get("step")
        for e in events
        if e.get("type") == "step_started" and e.get("kind") == "embed"
    }
    ids: dict[str, str] = {}
    replacements = sorted((placeholders or {}).items(), key=lambda kv: len(kv[0]), reverse=True)

    def place(text: str) -> str:
        for path, name in replacements:
            text = text.replace(path, name)
        return text

    def renumber(event: dict[str, Any]) -> dict[str, Any]:
        """Ids only where ids live: a tool result that happens to equal an id stays as is.
        Events come in order, so a response names each id before anything repeats it."""
        kind = event.get("type")
        call_id = event.get("id")
        if kind in ("tool_call", "tool_result") and isinstance(call_id, str):
            if call_id != DIRECT_CALL_ID:
                event["id"] = ids.setdefault(call_id, f"call-{len(ids) + 1}")
        elif kind == "llm_response" and isinstance(event.get("tool_calls"), list):
            (carrier,) = renumber_ids([{"tool_calls": event["tool_calls"]}], ids)
            event["tool_calls"] = carrier["tool_calls"]
        elif kind == "llm_request" and isinstance(event.get("messages"), list):
            event["messages"] = [
                renumber_ids([m], ids)[0] if isinstance(m, Mapping) else m
                for m in event["messages"]
            ]
        return event

    def summarised(event: Mapping[str, Any]) -> Mapping[str, Any]:
        kind = event.get("type")
        if kind in ("step_finished", "item_finished") and event.get("step") in embedding:
            return {**event, "output": vector_summary(event.get("output"))}
        return event

    # Volatile keys go at the top of each event only: a tool argument named `time` stays.
    return [
        renumber(
            map_strings(
                {k: v for k, v in summarised(event).items() if k not in _NOT_IN_VIEW},
                place,
            )
        )
        for event in events
    ]


class RunOrder:
    """Where a step id goes in the run order, nested ones included: a sub-workflow's steps
    (`PARENT/INNER`) and a loop's (`LOOP[N]/INNER`, iteration by iteration) after their
    parent's start, in the order of their own steps, at any depth (`a/b[2]/c`).
    It learns the orders from the events that list them (`steps` of `run_started`, and of
    the `step_started` of a step with nested steps), so views that sort by it are the same
    whatever the timing of a concurrent run."""

    def __init__(self) -> None:
        self._ranks: dict[str, dict[str, int]] = {}

    def see(self, kind: str | None, step: str | None, data: Mapping[str, Any]) -> None:
        steps = data.get("steps")
        if kind in ("run_started", "step_started") and isinstance(steps, list):
            self._ranks[step or ""] = {name: i for i, name in enumerate(steps)}

    def key(self, step: str) -> tuple[float, ...]:
        """(rank, iteration, rank, ..., rank) along the id's scopes (iteration 0 for a
        sub-workflow's scope, which has none; the parent's own `step_started`, placed at
        -1, comes first); an id the orders do not name goes after those they do."""
        key: list[float] = []
        segments = step.split("/")
        parent = ""
        for depth, segment in enumerate(segments):
            name, _, iteration = segment.partition("[")
            ranks = self._ranks.get(parent, {})
            key.append(ranks.get(name, len(ranks)))
            if depth < len(segments) - 1:
                key.append(int(iteration.rstrip("]")) if iteration[:-1].isdigit() else 0)
            parent = "/".join([*segments[:depth], name])
        return tuple(key)


def vector_summary(output: Any) -> Any:
    """An `embed:` step's output in words: `<vector of 384>`, `<3 vectors of 384>` (a list
    of items' outputs: a list of those); anything else as it is."""
    if not isinstance(output, list) or not output:
        return output
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in output):
        return f"<vector of {len(output)}>"
    if all(isinstance(v, list) and v and not isinstance(v[0], list) for v in output):
        return f"<{len(output)} vectors of {len(output[0])}>"
    return [vector_summary(part) for part in output]


def _in_run_order(events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Events grouped by step (in the run order that `run_started` lists, nested steps under
    their parent's), then by item, each group in the order it happened: concurrent steps
    interleave their events differently on every run, this order is the same every time."""
    order = RunOrder()
    for event in events:
        order.see(event.get("type"), event.get("step"), event)

    def key(numbered: tuple[int, Mapping[str, Any]]) -> tuple[float, ...]:
        seq, event = numbered
        step, kind = event.get("step"), event.get("type")
        if step is None:  # the run's own events: its start and notices first, its end last
            return (2 if kind == "run_finished" else 0, seq)
        item = event.get("item")
        within: tuple[float, ...]
        if kind == "step_finished":
            within = (math.inf,)
        elif kind == "iteration_finished":  # after its iteration's nested steps
            within = (event.get("iteration") or 0, math.inf)
        elif isinstance(item, int):
            within = (item,)
        else:
            within = (-1,)
        return (1, *order.key(step), *within, seq)

    return [event for _, event in sorted(enumerate(events), key=key)]


@dataclass(frozen=True)
class EventsFile:
    """The events read back from a JSONL log. `truncated_line` is the number of a last line
    that was cut off (the run was killed while writing it); the events before it are whole."""

    events: list[dict[str, Any]]
    truncated_line: int | None = None


def read_events(path: Path) -> EventsFile:
    """Read an events.jsonl; a cut-off last line is reported, a broken line before it fails."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the run log {path}: {error.strerror or error}"
        ) from None
    events: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                return EventsFile(events, truncated_line=number)
            raise ConfigurationError(
                f"{path}:{number}: the run log is damaged: not a JSON event ({error.msg})"
            ) from None
        if isinstance(event, dict):
            events.append(event)
    return EventsFile(events)
