"""Record and replay a run's model and tool exchanges: cassettes.

`lmflow run --record` wraps the live parts of a run (the LM Studio client and the MCP
sessions) so every model request with its answer, every embedding request with its vectors
and every tool call with its result lands in a cassette, a YAML file reviewed in pull
requests like code. `lmflow run --replay` gives the executor a `Replayer` that answers from
the cassette instead: no LM Studio, and, unless `--live-tools`, no MCP server. A call that
failed (an LM Studio error, an MCP server that died) is recorded with its error and fails
the same way when replayed.

Requests are matched on their meaning (model, messages, tool names, parameters). What
changes from run to run is normalized on both sides: secrets are masked, this run's workflow
directory, run directory, run id and start time become placeholders, and tool-call ids are
renumbered. Replayed answers get the placeholders filled back in with the current run's
values, so a cassette recorded on one machine replays on another.

The MCP SDK is imported only where a tool list is built: `to_yaml`, which the pytest plugin
uses for snapshots, does not pay for it.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from jsonschema import Draft202012Validator

from . import errors
from .chat import (
    ChatModel,
    ChatRequest,
    ChatResponse,
    EmbeddingModel,
    EmbedRequest,
    EmbedResponse,
    Image,
    ToolCall,
    ToolResult,
    Usage,
    described_messages,
    images_in,
)
from .content_files import content_name, extension, saved
from .errors import (
    CassetteError,
    ConfigurationError,
    LLMClientError,
    LLMResponseError,
    LmflowError,
    MCPServerError,
    ReplayMissError,
)
from .runlog import (
    Event,
    Redactor,
    RunLog,
    RunOrder,
    Scope,
    current_scope,
    map_strings,
    renumber_ids,
    write_atomic,
)
from .spec.load import parse_document
from .spec.source import SourceMap
from .toolboxes import ToolboxFromSource

if TYPE_CHECKING:
    from mcp.types import Tool

    from .ask_step import Question
    from .mcp import ToolSource

CASSETTE_VERSION = 1
HEADER = """\
# lmflow cassette: the model requests and MCP tool calls of one recorded run, with their
# answers. `lmflow run WORKFLOW --replay THIS_FILE` answers from it without LM Studio or MCP
# servers; re-record with `lmflow run WORKFLOW --record THIS_FILE --rerecord`.
# Placeholders: <workflow.dir>, <run.dir>, <run.id>, <run.started_at>; *** is a masked secret.
"""
MAX_DIFF_LINES = 40
_CONTENT_NAME = re.compile(r"[0-9a-f]{16}\.\w+")
"""The name of an image file in a cassette's folder (content_files.content_name)."""
PARAMS = ("tool_choice", "temperature", "max_tokens", "response_format")
REQUEST_FIELDS = ("model", "tools", "params", "messages")
Answer = TypeVar("Answer")
FIX_HINT = "fix the file by hand, or re-record it with --record ... --rerecord"

# --- the file -----------------------------------------------------------------------------


@dataclass
class LlmExchange:
    """One model request and its answer (or the error LM Studio gave instead).
    `request.messages` is the whole conversation."""

    n: int
    step: str | None
    round: int | None
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    item: int | None = None


@dataclass
class ToolExchange:
    """One MCP tool call and its result (or the error of a server that failed)."""

    n: int
    step: str | None
    server: str
    tool: str
    arguments: Any
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    item: int | None = None


@dataclass
class EmbedExchange:
    """One embedding request (`request`: model and texts) and its vectors, each vector on
    one line of the file (or the error LM Studio gave instead)."""

    n: int
    step: str | None
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    item: int | None = None


Exchange = LlmExchange | ToolExchange | EmbedExchange


@dataclass
class RecordedAnswer:
    """A person's answer to an `ask:` step's question: a replay gives it again, asking
    nobody."""

    step: str
    question: str
    answer: Any
    item: int | None = None

    def as_dict(self) -> dict[str, Any]:
        item = {} if self.item is None else {"item": self.item}
        return {"step": self.step, **item, "question": self.question, "answer": self.answer}


_Key = tuple[str | None, int | None, str]
"""Step, item and request: what a replayed answer is found by."""


@dataclass
class Cassette:
    """A recorded run: each server's tool list, then the exchanges grouped by step (in run
    order) and item, each group in the order its calls began."""

    workflow: str
    servers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    exchanges: list[Exchange] = field(default_factory=list)
    outcome: str | None = None
    path: Path | None = None
    answers: list[RecordedAnswer] = field(default_factory=list)
    vision: list[str] = field(default_factory=list)
    """The model names the recorded run's model check found to see images."""
    images: dict[str, Image] = field(default_factory=dict)
    """The images the exchanges carry, by digest: files in `<name>.images/` beside the YAML,
    which names each only by its reference (hash, type, size)."""

    @classmethod
    def load(cls, path: Path) -> Cassette:
        """Read and check a cassette; any problem is a `CassetteError` naming the file, and
        the line where the YAML tells one."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CassetteError(
                f"cassette {path} does not exist",
                hint=f"record it with `lmflow run WORKFLOW --record {path}`",
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise CassetteError(f"cannot read cassette {path}: {error}") from None
        source, data = _parse_yaml(text, path)
        problems = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
        if problems:
            problem = problems[0]
            where = "/".join(str(p) for p in problem.absolute_path) or "the top level"
            line = _line_of(source, list(problem.absolute_path))
            raise CassetteError(
                f"{path}:{line}: not a valid cassette: at {where}: {problem.message}",
                hint=FIX_HINT,
            )
        servers = {name: list(tools) for name, tools in (data.get("servers") or {}).items()}
        _check_tool_specs(servers, source, path)
        cassette = cls(
            data.get("workflow") or "",
            servers,
            outcome=data.get("outcome"),
            path=path,
            vision=list(data.get("vision") or ()),
        )
        cassette.answers = [
            RecordedAnswer(a["step"], a["question"], a["answer"], a.get("item"))
            for a in data.get("answers") or ()
        ]
        llm_messages: dict[int, list[Any]] = {}
        for index, item in enumerate(data["exchanges"]):
            answer = "result" if item["kind"] == "tool" else "response"
            if (answer in item) == ("error" in item):
                raise CassetteError(
                    f"{path}:{_line_of(source, ['exchanges', index])}: not a valid cassette: "
                    f"exchange {item['n']} needs either `{answer}` or `error`",
                    hint=FIX_HINT,
                )
            if item["kind"] == "tool":
                result = item.get("result")
                for at, reference in enumerate((result or {}).get("images") or ()):
                    line = _line_of(source, ["exchanges", index, "result", "images", at])
                    image = _stored_image(reference, path, line)
                    cassette.images[image.digest] = image
                cassette.exchanges.append(
                    ToolExchange(
                        item["n"],
                        item.get("step"),
                        item["server"],
                        item["tool"],
                        item.get("arguments") or {},
                        None if result is None else {"text": "", "is_error": False, **result},
                        item.get("error"),
                        item.get("item"),
                    )
                )
                continue
            if item["kind"] == "embed":
                cassette.exchanges.append(
                    EmbedExchange(
                        item["n"],
                        item.get("step"),
                        dict(item["request"]),
                        item.get("response"),
                        item.get("error"),
                        item.get("item"),
                    )
                )
                continue
            request = dict(item["request"])
            messages = list(request.pop("messages"))
            if "continues" in request:
                earlier = request.pop("continues")
                if earlier not in llm_messages:
                    line = _line_of(source, ["exchanges", index, "request", "continues"])
                    raise CassetteError(
                        f"{path}:{line}: exchange {item['n']} continues exchange {earlier}, "
                        "which is not an earlier model exchange"
                    )
                messages = llm_messages[earlier] + messages
            request = {"model": request["model"], "tools": [], "params": {}, **request}
            request["messages"] = messages
            llm_messages[item["n"]] = messages
            cassette.exchanges.append(
                LlmExchange(
                    item["n"],
                    item.get("step"),
                    item.get("round"),
                    request,
                    item.get("response"),
                    item.get("error"),
                    item.get("item"),
                )
            )
        return cassette

    def dump(self) -> str:
        """The YAML text: a conversation's later requests list only their new messages."""
        exchanges: list[dict[str, Any]] = []
        conversations: list[tuple[int, list[Any]]] = []
        for exchange in self.exchanges:
            if isinstance(exchange, ToolExchange):
                item: dict[str, Any] = {
                    "n": exchange.n,
                    "kind": "tool",
                    "step": exchange.step,
                    **_item_of(exchange),
                    "server": exchange.server,
                    "tool": exchange.tool,
                    "arguments": exchange.arguments,
                }
                if exchange.result is not None:
                    item["result"] = {
                        k: v
                        for k, v in exchange.result.items()
                        if k != "structured" or v is not None
                    }
                exchanges.append(_with_error(item, exchange.error))
                continue
            if isinstance(exchange, EmbedExchange):
                item = {"n": exchange.n, "kind": "embed", "step": exchange.step}
                item.update(_item_of(exchange))
                item["request"] = exchange.request
                if exchange.response is not None:
                    item["response"] = exchange.response
                exchanges.append(_with_error(item, exchange.error))
                continue
            messages = exchange.request["messages"]
            request = {k: v for k, v in exchange.request.items() if k != "messages"}
            # The latest earlier request whose conversation this one continues.
            for earlier, known in reversed(conversations):
                if len(known) < len(messages) and messages[: len(known)] == known:
                    request["continues"] = earlier
                    request["messages"] = messages[len(known) :]
                    break
            else:
                request["messages"] = messages
            conversations.append((exchange.n, messages))
            item = {
                "n": exchange.n,
                "kind": "llm",
                "step": exchange.step,
                **_item_of(exchange),
                "round": exchange.round,
                "request": request,
            }
            if exchange.response is not None:
                item["response"] = exchange.response
            exchanges.append(_with_error(item, exchange.error))
        document = {
            "version": CASSETTE_VERSION,
            "workflow": self.workflow,
            "outcome": self.outcome,
            **({"vision": sorted(self.vision)} if self.vision else {}),
            "servers": self.servers,
            "exchanges": exchanges,
        }
        if self.answers:  # absent without `ask:` steps: older cassettes keep their format
            document["answers"] = [answer.as_dict() for answer in self.answers]
        return HEADER + to_yaml(document)

    def save(self, path: Path) -> None:
        """Write atomically: an interrupted save leaves the old cassette, never half a file."""
        try:
            write_atomic(path, self.dump())
            _store_images(images_dir(path), self.images.values())
        except OSError as error:
            raise CassetteError(
                f"cannot write the cassette {path}: {error.strerror or error}"
            ) from None


def images_dir(cassette: Path) -> Path:
    """Where a cassette keeps its images: `<name>.images/` beside it."""
    return cassette.with_name(f"{cassette.stem}.images")


def _store_images(directory: Path, images: Iterable[Image]) -> None:
    """Each image as a file named by its content; files of images the cassette no longer
    holds are removed (a re-recording leaves no stale ones)."""
    wanted = {content_name(image.data, image.media_type): image for image in images}
    if directory.is_dir():
        for stale in directory.iterdir():
            if stale.name not in wanted and _CONTENT_NAME.fullmatch(stale.name):
                stale.unlink()
    for image in wanted.values():
        saved(directory, image.data, image.media_type)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _stored_image(reference: Any, cassette: Path, line: int) -> Image:
    """The image a tool result of the cassette names, read from its file and checked."""
    if not isinstance(reference, Mapping) or not all(
        isinstance(reference.get(key), str) for key in ("sha256", "media_type")
    ):
        raise CassetteError(
            f"{cassette}:{line}: not a valid cassette: an image is named by "
            "{type: image, sha256, media_type, bytes}",
            hint=FIX_HINT,
        )
    file = images_dir(cassette) / (reference["sha256"] + extension(reference["media_type"]))
    try:
        data = file.read_bytes()
    except OSError as error:
        raise CassetteError(
            f"{cassette}:{line}: the image {file} the cassette names cannot be read: "
            f"{error.strerror or error}",
            hint="commit the cassette's .images folder with it, or re-record it",
        ) from None
    image = Image(reference["media_type"], data)
    if image.digest != reference["sha256"]:
        raise CassetteError(
            f"{cassette}:{line}: the image {file} does not have the content its name says",
            hint="re-record the cassette",
        )
    return image


def _item_of(exchange: Exchange) -> dict[str, int]:
    """The `item` key of an exchange inside a `for_each` item; absent elsewhere, so cassettes
    of workflows without `for_each` keep their format."""
    return {} if exchange.item is None else {"item": exchange.item}


def _with_error(item: dict[str, Any], error: Mapping[str, str] | None) -> dict[str, Any]:
    return item if error is None else {**item, "error": dict(error)}


def ensure_recordable(path: Path, rerecord: bool) -> None:
    """Checked before the run starts: `--record` never overwrites a cassette by accident (it
    is reviewed, committed work), and a recording that could not be saved at the end would
    waste the whole run. Either is a command-line mistake: `ConfigurationError`."""
    if path.is_dir():
        raise ConfigurationError(
            f"cassette {path} is a directory", hint="give --record the path of a file"
        )
    if path.exists() and not rerecord:
        raise ConfigurationError(
            f"cassette {path} already exists; refusing to overwrite it",
            hint="pass --rerecord to replace it, or --replay to run from it",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"):
            pass  # created and deleted again: the directory takes new files
    except OSError as error:
        raise ConfigurationError(
            f"cannot write the cassette {path}: {error.strerror or error}",
            hint="choose another --record path",
        ) from None


# --- YAML ---------------------------------------------------------------------------------

_YAML_LINE_BREAKS = ("\r", "\x85", "\u2028", "\u2029")
"""Characters YAML reads as line breaks: only a double-quoted string keeps them as they are."""


class _Dumper(yaml.SafeDumper):
    """Readable YAML: multi-line strings as `|` blocks, short flat collections on one line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if any(c in value for c in _YAML_LINE_BREAKS):
        style: str | None = '"'
    else:
        style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _is_flat(values: Iterable[Any]) -> bool:
    values = list(values)
    scalars = all(
        not isinstance(v, (Mapping, list, tuple)) and not (isinstance(v, str) and "\n" in v)
        for v in values
    )
    return scalars and len(json.dumps(values, default=str)) <= 72


def _represent_dict(dumper: yaml.SafeDumper, value: Mapping[str, Any]) -> yaml.Node:
    return dumper.represent_mapping(
        "tag:yaml.org,2002:map", value, flow_style=_is_flat(value.values())
    )


def _is_vector(values: Sequence[Any]) -> bool:
    """A list of numbers only (an embedding vector): one line however long, not one line
    per number."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _represent_list(dumper: yaml.SafeDumper, value: Sequence[Any]) -> yaml.Node:
    flow = bool(value) and (_is_flat(value) or _is_vector(value))
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def to_yaml(value: Any) -> str:
    """The YAML form of cassettes, snapshots and replay diffs; `yaml.safe_load` gives the
    same data back."""
    return yaml.dump(
        _plain(value), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000
    )


def _plain(value: Any) -> Any:
    """JSON-shaped data (no read-only mappings or tuples) that YAML and equality agree on."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _parse_yaml(text: str, path: Path) -> tuple[SourceMap, Any]:
    """The cassette through the workflow loader: the same limits and rules, positions kept."""
    doc = parse_document(text, str(path))
    if any(problem.rule == "empty-file" for problem in doc.problems):
        raise CassetteError(f"cassette {path} is empty", hint="re-record it with --record")
    if doc.problems:
        first = doc.problems[0]
        raise CassetteError(
            f"{first.path}:{first.line}:{first.col}: the cassette is not valid YAML: "
            f"{first.message}",
            hint=first.hint or FIX_HINT,
        )
    return doc.source, doc.data


def _line_of(source: SourceMap, path: Sequence[Any]) -> int:
    """The line of the deepest node on `path` that exists (1-based)."""
    return source.position(tuple(path)).line


def _check_tool_specs(servers: Mapping[str, list[Any]], source: SourceMap, path: Path) -> None:
    """Every recorded tool must make an MCP `Tool`, or the replay would fail half-way."""
    from mcp.types import Tool
    from pydantic import ValidationError

    for server, specs in servers.items():
        for index, spec in enumerate(specs):
            try:
                Tool.model_validate(spec)
            except ValidationError as error:
                detail = error.errors()[0]
                at = ["servers", server, index, *detail["loc"]]
                raise CassetteError(
                    f"{path}:{_line_of(source, at)}: not a valid cassette: at "
                    f"{'/'.join(map(str, at))}: {detail['msg']}",
                    hint=FIX_HINT,
                ) from None


_TEXT = {"type": ["string", "null"]}
_ERROR = {
    "type": "object",
    "required": ["type", "message"],
    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
}
_TOOL_CALLS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "name", "arguments"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "arguments": {"type": "string"},
        },
    },
}
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "exchanges"],
    "properties": {
        "version": {"const": CASSETTE_VERSION},
        "workflow": _TEXT,
        "outcome": _TEXT,
        "vision": {"type": "array", "items": {"type": "string"}},
        "servers": {
            "type": ["object", "null"],
            "additionalProperties": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "input_schema"],
                    "properties": {
                        "name": {"type": "string"},
                        "title": _TEXT,
                        "description": _TEXT,
                        "input_schema": {"type": "object"},
                        "annotations": {"type": "object"},
                    },
                },
            },
        },
        "exchanges": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["n", "kind"],
                "properties": {
                    "n": {"type": "integer"},
                    "kind": {"enum": ["llm", "tool", "embed"]},
                    "step": _TEXT,
                    "item": {"type": ["integer", "null"]},
                    "error": _ERROR,
                },
                "allOf": [
                    {
                        "if": {"properties": {"kind": {"const": "llm"}}},
                        "then": {
                            "required": ["request"],
                            "properties": {
                                "round": {"type": ["integer", "null"]},
                                "request": {
                                    "type": "object",
                                    "required": ["model", "messages"],
                                    "properties": {
                                        "model": {"type": "string"},
                                        "tools": {"type": "array", "items": {"type": "string"}},
                                        "params": {"type": "object"},
                                        "continues": {"type": "integer"},
                                        "messages": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "required": ["role"],
                                                "properties": {
                                                    "role": {"type": "string"},
                                                    "tool_calls": {
                                                        "type": "array",
                                                        "items": {"type": "object"},
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                                "response": {
                                    "type": "object",
                                    "properties": {
                                        "content": _TEXT,
                                        "reasoning": _TEXT,
                                        "finish_reason": _TEXT,
                                        "tool_calls": _TOOL_CALLS,
                                        "usage": {
                                            "type": "object",
                                            "properties": {
                                                "prompt_tokens": {"type": "integer"},
                                                "completion_tokens": {"type": "integer"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                    {
                        "if": {"properties": {"kind": {"const": "embed"}}},
                        "then": {
                            "required": ["request"],
                            "properties": {
                                "request": {
                                    "type": "object",
                                    "required": ["model", "texts"],
                                    "properties": {
                                        "model": {"type": "string"},
                                        "texts": {"type": "array", "items": {"type": "string"}},
                                    },
                                },
                                "response": {
                                    "type": "object",
                                    "required": ["vectors"],
                                    "properties": {
                                        "vectors": {
                                            "type": "array",
                                            "items": {
                                                "type": "array",
                                                "items": {"type": "number"},
                                            },
                                        },
                                        "usage": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                    {
                        "if": {"properties": {"kind": {"const": "tool"}}},
                        "then": {
                            "required": ["server", "tool"],
                            "properties": {
                                "server": {"type": "string"},
                                "tool": {"type": "string"},
                                "arguments": {"type": ["object", "null"]},
                                "result": {
                                    "type": "object",
                                    "properties": {
                                        "text": {"type": "string"},
                                        "is_error": {"type": "boolean"},
                                        "images": {"type": "array"},
                                    },
                                },
                            },
                        },
                    },
                ],
            },
        },
        "answers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["step", "question", "answer"],
                "properties": {
                    "step": {"type": "string"},
                    "item": {"type": ["integer", "null"]},
                    "question": {"type": "string"},
                },
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(_SCHEMA)


# --- normalizing --------------------------------------------------------------------------


class Normalizer:
    """Turns what is particular to this run into stable text, and back.

    Secrets are masked (and stay masked: a cassette never holds one); this run's workflow
    directory, run directory, run id and start time become placeholders, in mapping keys as
    in values, which `restore` fills back in with this run's values.
    """

    def __init__(self, redactor: Redactor, context: Mapping[str, Any]) -> None:
        self._redactor = redactor
        workflow = context.get("workflow", {})
        run = context.get("run", {})
        values = {
            "<workflow.dir>": workflow.get("dir"),
            "<run.dir>": run.get("dir"),
            "<run.id>": run.get("id"),
            "<run.started_at>": run.get("started_at"),
        }
        self._placeholders = sorted(
            ((str(v), k) for k, v in values.items() if v and len(str(v)) > 1),
            key=lambda pair: len(pair[0]),
            reverse=True,
        )

    def __call__(self, value: Any) -> Any:
        return map_strings(self._redactor(_plain(value)), self._hide)

    def restore(self, value: Any) -> Any:
        return map_strings(value, self._fill)

    def _hide(self, text: str) -> str:
        for actual, placeholder in self._placeholders:
            text = text.replace(actual, placeholder)
        return text

    def _fill(self, text: str) -> str:
        for actual, placeholder in self._placeholders:
            text = text.replace(placeholder, actual)
        return text


def request_record(request: ChatRequest) -> dict[str, Any]:
    """What a model request means, without transport details."""
    params = {name: getattr(request, name) for name in PARAMS}
    return {
        "model": request.model,
        "tools": [tool["function"]["name"] for tool in request.tools],
        "params": {k: v for k, v in params.items() if v is not None},
        "messages": described_messages(request.messages),
    }


def response_record(response: ChatResponse) -> dict[str, Any]:
    record: dict[str, Any] = {"content": response.content}
    if response.tool_calls:
        record["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls
        ]
    if response.reasoning is not None:
        record["reasoning"] = response.reasoning
    record["finish_reason"] = response.finish_reason
    record["usage"] = response.usage.as_dict()
    return record


def embed_request_record(request: EmbedRequest) -> dict[str, Any]:
    return {"model": request.model, "texts": list(request.texts)}


def embed_response_record(response: EmbedResponse) -> dict[str, Any]:
    return {"vectors": [list(v) for v in response.vectors], "usage": response.usage.as_dict()}


def result_record(result: ToolResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "text": result.text,
        "is_error": result.is_error,
        "structured": result.structured,
    }
    if result.images:
        record["images"] = [image.reference() for image in result.images]
    return record


def _match_key(value: Any) -> str:
    """Equal values give equal keys: a temperature of 0.0 is the temperature 0."""
    whole = json.loads(json.dumps(value), parse_float=_number)
    return json.dumps(whole, sort_keys=True, ensure_ascii=False)


def _number(text: str) -> float | int:
    number = float(text)
    return int(number) if number.is_integer() else number


def _llm_key(record: Mapping[str, Any]) -> str:
    return _match_key({**record, "messages": renumber_ids(record["messages"], {})})


def _tool_key(server: str, tool: str, arguments: Any) -> str:
    return _match_key([server, tool, arguments])


def _tool_spec(tool: Tool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.name}
    if tool.title:
        spec["title"] = tool.title
    spec["description"] = tool.description
    spec["input_schema"] = tool.input_schema
    if tool.annotations is not None:  # `tools: {read_only: true}` reads them on replay too
        spec["annotations"] = tool.annotations.model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
    return spec


class _Position:
    """Where each request of the run belongs: its step and item (from the executor's scope,
    so concurrent steps are told apart) and its round (the latest one that scope's events
    named); also whether a step failed, and the run's step order (how the recorded run
    ended, and how its exchanges are ordered in the file)."""

    def __init__(self, log: RunLog) -> None:
        self.rounds: dict[Scope, int | None] = {}
        self.order = RunOrder()
        self.failed = False
        log.subscribe(self)

    def __call__(self, event: Event) -> None:
        self.order.see(event.type, event.step, event.data)
        if event.type in ("llm_request", "tool_call") and event.step is not None:
            self.rounds[Scope(event.step, event.item)] = event.data.get("round")
        elif event.type == "step_finished" and event.data.get("status") == "failed":
            self.failed = True

    @property
    def scope(self) -> Scope | None:
        return current_scope.get()

    @property
    def round(self) -> int | None:
        scope = self.scope
        return None if scope is None else self.rounds.get(scope)

    def describe(self) -> str:
        scope = self.scope
        if scope is None:
            return "before the first step"
        item = f", item {scope.item}" if scope.item is not None else ""
        return f"step {scope.step!r}{item}" + (f", round {self.round}" if self.round else "")

    def rank(self, exchange: Exchange) -> tuple[tuple[float, ...], int]:
        """Where an exchange goes in the file: by step (in run order), then item."""
        return self.rank_of(exchange.step, exchange.item)

    def rank_of(self, step: str | None, item: int | None) -> tuple[tuple[float, ...], int]:
        """Where a step's (and item's) record goes: by step in run order, then item."""
        return (self.order.key(step) if step else (-1,)), -1 if item is None else item


# --- recording ----------------------------------------------------------------------------


class Recorder:
    """Wraps a run's live model and tools and keeps every exchange for the cassette."""

    def __init__(
        self,
        workflow: str,
        log: RunLog,
        context: Mapping[str, Any],
        order: Sequence[str] = (),
    ) -> None:
        self._workflow = workflow
        self._normalize = Normalizer(log.redactor, context)
        self._position = _Position(log)
        # the run's step order (the run started before its recorder: it missed run_started)
        self._position.order.see("run_started", None, {"steps": list(order)})
        # A slot per exchange, taken when it begins: within a step and item the file
        # follows the order of the calls, not the order in which they happened to finish.
        self._slots: list[Exchange | None] = []
        self._servers: dict[str, list[Tool]] = {}
        self._answers: list[RecordedAnswer] = []
        log.subscribe(self._keep_answer)
        self._images: dict[str, Image] = {}
        self._model: ChatModel | None = None

    def _keep_answer(self, event: Event) -> None:
        """A person's answer (`ask_answered`, secrets already masked) goes into the
        cassette, so its replay asks nobody."""
        if event.type == "ask_answered" and event.step is not None:
            question = self._normalize(event.data["question"])
            answer = self._normalize(event.data["answer"])
            self._answers.append(RecordedAnswer(event.step, question, answer, event.item))

    def chat(self, model: ChatModel) -> ChatModel:
        self._model = model
        return _RecordingChat(model, self)

    def keep_images(self, images: Iterable[Image]) -> None:
        """Images an exchange carried, for the cassette's folder."""
        self._images.update((image.digest, image) for image in images)

    def tools(self, source: ToolSource, servers: Iterable[str]) -> RecordingTools:
        """Record the tools of `servers` now, so a step the run skips still replays."""
        recording = RecordingTools(source, self)
        for server in servers:
            recording.tools(server)
        return recording

    async def _record(
        self,
        exchange: Exchange,
        call: Awaitable[Answer],
        record: Callable[[Answer], dict[str, Any]],
        failure: type[LmflowError],
    ) -> Answer:
        """Await `call` and keep its answer in the exchange; a `failure` is kept too (it
        replays as the same error), then raised."""
        slot = len(self._slots)
        self._slots.append(None)
        try:
            answer = await call
        except failure as error:
            self._slots[slot] = replace(
                exchange, error={"type": type(error).__name__, "message": error.message}
            )
            raise
        recorded = record(answer)
        if isinstance(exchange, (LlmExchange, EmbedExchange)):
            self._slots[slot] = replace(exchange, response=recorded)
        else:
            self._slots[slot] = replace(exchange, result=recorded)
        return answer

    def cassette(self) -> Cassette:
        """Everything recorded so far, normalized: secrets masked, placeholders, call ids."""
        ids: dict[str, str] = {}
        cassette = Cassette(
            workflow=self._workflow,
            outcome="failed" if self._position.failed else "succeeded",
            vision=sorted(getattr(self._model, "vision_models", ())),
            images=dict(self._images),
            servers={
                name: self._normalize([_tool_spec(t) for t in tools])
                for name, tools in self._servers.items()
            },
            answers=sorted(self._answers, key=lambda a: self._position.rank_of(a.step, a.item)),
        )
        recorded = [slot for slot in self._slots if slot is not None]
        for exchange in sorted(recorded, key=self._position.rank):
            n = len(cassette.exchanges) + 1
            normalized: Exchange
            error = self._normalize(exchange.error)
            if isinstance(exchange, LlmExchange):
                request = self._normalize(exchange.request)
                request["messages"] = renumber_ids(request["messages"], ids)
                response = exchange.response
                if response is not None:  # its tool-call ids: in the same numbering
                    response = renumber_ids([self._normalize(response)], ids)[0]
                normalized = replace(exchange, n=n, request=request, response=response, error=error)
            elif isinstance(exchange, EmbedExchange):
                request = self._normalize(exchange.request)
                normalized = replace(exchange, n=n, request=request, error=error)
            else:
                normalized = replace(
                    exchange,
                    n=n,
                    arguments=self._normalize(exchange.arguments),
                    result=self._normalize(exchange.result),
                    error=error,
                )
            cassette.exchanges.append(normalized)
        return cassette


class _RecordingChat:
    def __init__(self, model: ChatModel, recorder: Recorder) -> None:
        self._model = model
        self._recorder = recorder

    @property
    def vision_models(self) -> Iterable[str]:
        return getattr(self._model, "vision_models", ())

    async def chat(self, request: ChatRequest) -> ChatResponse:
        where = self._recorder._position
        scope = where.scope or Scope("")
        self._recorder.keep_images(images_in(request.messages))
        return await self._recorder._record(
            LlmExchange(
                0, scope.step or None, where.round, request_record(request), item=scope.item
            ),
            self._model.chat(request),
            response_record,
            LLMClientError,
        )

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        if not isinstance(self._model, EmbeddingModel):
            raise ConfigurationError("the recorded model client cannot compute embeddings")
        scope = self._recorder._position.scope or Scope("")
        return await self._recorder._record(
            EmbedExchange(0, scope.step or None, embed_request_record(request), item=scope.item),
            self._model.embed(request),
            embed_response_record,
            LLMClientError,
        )


class RecordingTools(ToolboxFromSource):
    """A tool provider that records what the live MCP sessions list and answer."""

    def __init__(self, source: ToolSource, recorder: Recorder) -> None:
        self._source = source
        self._recorder = recorder

    def tools(self, server: str) -> list[Tool]:
        listed = self._source.tools(server)
        self._recorder._servers.setdefault(server, listed)
        return listed

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        scope = self._recorder._position.scope or Scope("")
        result = await self._recorder._record(
            ToolExchange(0, scope.step or None, server, tool, dict(arguments), item=scope.item),
            self._source.call_tool(server, tool, arguments),
            result_record,
            MCPServerError,
        )
        self._recorder.keep_images(result.images)
        return result


# --- replaying ----------------------------------------------------------------------------


class Replayer(ToolboxFromSource):
    """The cassette in place of LM Studio (a `ChatModel`) and of the MCP sessions (a tool
    source whose tool lists and results come from the cassette: no server runs).

    A request the cassette does not hold raises `ReplayMissError` (exit code 3) naming the
    closest recorded one and what differs. The executor turns an error inside a step into a
    failed step; `first_miss` keeps the first one, so the caller can end the run with exit
    code 3.
    """

    def __init__(
        self,
        cassette: Cassette,
        log: RunLog,
        context: Mapping[str, Any],
        content_dir: Path | None = None,
    ) -> None:
        self.cassette = cassette
        self.vision_models = frozenset(cassette.vision)
        self._content_dir = content_dir
        """Where the run keeps tool results' images (None: it keeps no files)."""
        self.first_miss: ReplayMissError | None = None
        self._normalize = Normalizer(log.redactor, context)
        self._position = _Position(log)
        self._workflow = str(context.get("workflow", {}).get("name") or "")
        self._workflow_path = str(context.get("workflow", {}).get("path") or "WORKFLOW")
        # Answers by (step, item, request): concurrent steps and items each find their own,
        # whatever order they ask in.
        self._llm: dict[_Key, deque[LlmExchange]] = {}
        self._tool: dict[_Key, deque[ToolExchange]] = {}
        self._embed: dict[_Key, deque[EmbedExchange]] = {}
        for exchange in cassette.exchanges:
            if isinstance(exchange, EmbedExchange):
                key = (exchange.step, exchange.item, _match_key(exchange.request))
                self._embed.setdefault(key, deque()).append(exchange)
            elif isinstance(exchange, LlmExchange):
                key = (exchange.step, exchange.item, _llm_key(exchange.request))
                self._llm.setdefault(key, deque()).append(exchange)
            else:
                request = _tool_key(exchange.server, exchange.tool, exchange.arguments)
                self._tool.setdefault((exchange.step, exchange.item, request), deque()).append(
                    exchange
                )

    def recorded_answer(self, question: Question) -> Any:
        """The answer recorded for this step, item and question (`NOT_RECORDED` when the
        question changed or was never asked while recording)."""
        from .ask_step import NOT_RECORDED  # anyio: not for the snapshot writer's imports

        text = self._normalize(question.text)
        for recorded in self.cassette.answers:
            if (recorded.step, recorded.item, recorded.question) == (
                question.step,
                question.item,
                text,
            ):
                return self._normalize.restore(recorded.answer)
        return NOT_RECORDED

    def _queue(self, queues: dict[_Key, deque[Answer]], request: str) -> deque[Answer] | None:
        """The recorded answers to this request in the current step and item; outside any
        step (a caller without an executor), or in a cassette that names no step, anywhere."""
        scope = self._position.scope
        if scope is None:
            return next((q for (_, _, r), q in queues.items() if r == request), None)
        return queues.get((scope.step, scope.item, request)) or queues.get((None, None, request))

    def _model_answer(
        self,
        queues: dict[_Key, deque[Answer]],
        request: str,
        miss: Callable[[], ReplayMissError],
    ) -> Answer:
        """The recorded exchange that answers a model request (chat or embeddings); its
        recorded error, raised again; or the miss."""
        queue = self._queue(queues, request)
        if queue is None:
            raise miss()
        exchange = _take(queue)
        if exchange.error is not None:
            error = self._normalize.restore(exchange.error)
            raise _recorded_error(error, LLMClientError, LLMResponseError)
        return exchange

    async def chat(self, request: ChatRequest) -> ChatResponse:
        record = self._normalize(request_record(request))
        exchange = self._model_answer(self._llm, _llm_key(record), partial(self._llm_miss, record))
        response = self._normalize.restore(exchange.response)
        return ChatResponse(
            content=response.get("content"),
            tool_calls=tuple(
                ToolCall(c["id"], c["name"], c["arguments"]) for c in response.get("tool_calls", ())
            ),
            finish_reason=response.get("finish_reason"),
            reasoning=response.get("reasoning"),
            usage=Usage.from_dict(response.get("usage") or {}),
            model=request.model,
        )

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        record = self._normalize(embed_request_record(request))
        miss = partial(self._embed_miss, record)
        exchange = self._model_answer(self._embed, _match_key(record), miss)
        assert exchange.response is not None
        return EmbedResponse(
            vectors=tuple(tuple(v) for v in exchange.response["vectors"]),
            usage=Usage.from_dict(exchange.response.get("usage") or {}),
            model=request.model,
        )

    def tools(self, server: str) -> list[Tool]:
        from mcp.types import Tool

        specs = self.cassette.servers.get(server)
        if specs is None:
            known = ", ".join(self.cassette.servers) or "none"
            raise self._miss(
                f"the cassette holds no tool list of MCP server {server!r} (it has: {known})"
            )
        return [Tool.model_validate(self._normalize.restore(spec)) for spec in specs]

    async def call_tool(self, server: str, tool: str, arguments: Mapping[str, Any]) -> ToolResult:
        normalized = self._normalize(dict(arguments))
        queue = self._queue(self._tool, _tool_key(server, tool, normalized))
        if queue is None:
            raise self._tool_miss(server, tool, normalized)
        exchange = _take(queue)
        if exchange.error is not None:
            error = self._normalize.restore(exchange.error)
            raise _recorded_error(error, MCPServerError, MCPServerError)
        result = self._normalize.restore(exchange.result)
        images = tuple(self.cassette.images[i["sha256"]] for i in result.get("images") or ())
        if self._content_dir is not None:  # where the recorded run's tool saved them
            for image in images:
                saved(self._content_dir, image.data, image.media_type)
        return ToolResult(
            result["text"], bool(result["is_error"]), result.get("structured"), images=images
        )

    def _miss(self, message: str, hint: str | None = None) -> ReplayMissError:
        where = self.cassette.path or "the cassette"
        text = f"replay miss ({self._position.describe()}): {message}"
        if self.cassette.workflow and self.cassette.workflow != self._workflow:
            text += (
                f"\nnote: {where} was recorded for workflow {self.cassette.workflow!r}, "
                f"not {self._workflow!r}"
            )
        error = ReplayMissError(
            text,
            hint=hint
            or "the workflow, its inputs or a tool changed since the cassette was recorded; "
            f"re-record it: lmflow run {shlex.quote(self._workflow_path)} --record {where} "
            "--rerecord",
        )
        self.first_miss = self.first_miss or error
        return error

    def _llm_miss(self, record: dict[str, Any]) -> ReplayMissError:
        recorded = [e for e in self.cassette.exchanges if isinstance(e, LlmExchange)]
        if not recorded:
            return self._miss(
                f"the cassette holds no model requests, and this run asks one of {record['model']}"
            )
        live = {**record, "messages": renumber_ids(record["messages"], {})}
        candidates = [
            (e, {**e.request, "messages": renumber_ids(e.request["messages"], {})})
            for e in recorded
        ]
        best, closest = max(
            candidates,
            key=lambda c: (
                _similarity(c[1], live),
                c[0].step == (self._position.scope or Scope("")).step,
                c[0].round == self._position.round,
            ),
        )
        differing = [
            name
            for name in REQUEST_FIELDS
            if _match_key(closest.get(name)) != _match_key(live.get(name))
        ]
        diff = "\n".join(_diff(closest[name], live[name], name) for name in differing)
        if all(closest[name] == live[name] for name in differing):
            diff = "(equal as numbers: they differ only in number types, e.g. 1 and true)\n" + diff
        where = f"step {best.step!r}, round {best.round}" if best.step else "no step"
        return self._miss(
            f"the cassette holds no answer to this model request.\n"
            f"closest recorded request: exchange {best.n} ({where}); "
            f"it differs in {', '.join(differing)}:\n{diff}"
        )

    def _embed_miss(self, record: dict[str, Any]) -> ReplayMissError:
        recorded = [e.request for e in self.cassette.exchanges if isinstance(e, EmbedExchange)]
        text = f"the cassette holds no vectors of these {len(record['texts'])} text(s)"
        if not recorded:
            return self._miss(f"{text}; it holds no embedding requests at all")
        closest = max(recorded, key=lambda r: _similarity(r, record))
        return self._miss(f"{text}.\nclosest recorded request:\n{_diff(closest, record, 'embed')}")

    def _tool_miss(self, server: str, tool: str, arguments: Any) -> ReplayMissError:
        call = {"server": server, "tool": tool, "arguments": arguments}
        recorded = [
            {"server": e.server, "tool": e.tool, "arguments": e.arguments}
            for e in self.cassette.exchanges
            if isinstance(e, ToolExchange)
        ]
        text = f"the cassette holds no result of tool {server}.{tool} with these arguments"
        if not recorded:
            return self._miss(f"{text}; it holds no tool calls at all")
        closest = max(
            recorded,
            key=lambda r: ((r["server"], r["tool"]) == (server, tool), _similarity(r, call)),
        )
        if closest == call:
            text += " (equal as numbers: they differ only in number types, e.g. 1 and true)"
        return self._miss(f"{text}.\nclosest recorded call:\n{_diff(closest, call, 'call')}")


def _take(queue: deque[Any]) -> Any:
    """Identical requests get the recorded answers in order; the last one repeats."""
    return queue.popleft() if len(queue) > 1 else queue[0]


def _recorded_error(
    error: Mapping[str, str], family: type[LmflowError], default: type[LmflowError]
) -> LmflowError:
    """The recorded error again: its own class when that is one of `family` (the errors the
    model client, or an MCP server, raise), else `default`."""
    kind = getattr(errors, error["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, family)):
        kind = default
    return kind(error["message"])


def _similarity(a: Any, b: Any) -> float:
    return difflib.SequenceMatcher(None, to_yaml(a).splitlines(), to_yaml(b).splitlines()).ratio()


def _diff(recorded: Any, live: Any, name: str) -> str:
    """A short unified diff of one field, in the cassette's own YAML form."""
    lines = list(
        difflib.unified_diff(
            to_yaml(recorded).splitlines(),
            to_yaml(live).splitlines(),
            f"{name} (recorded)",
            f"{name} (this run)",
            n=2,
            lineterm="",
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more lines)"]
    return "\n".join(f"  {line}" for line in lines)
