"""YAML -> plain data plus the position of every node: the one loader for workflows,
cassettes and `--inputs` files, so all three obey the same rules and limits.

PyYAML's constructors lose positions and silently keep the last of two duplicate keys, so
we compose the node graph ourselves and build the data from it: keys stay strings as
written (YAML 1.1 would turn `on:` into True), dates stay text, duplicates are problems,
aliases are counted so a "billion laughs" file stops early instead of eating memory, and
nesting is bounded on the flat event stream before composing, so the limit has a position
and never depends on how much stack is left.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .problems import Problem
from .source import JsonPath, Position, SourceMap

Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_NODES = 200_000
MAX_NESTING = 64
"""How deep lists and mappings may nest, in YAML files and in JSON given on the command line."""
QUOTE_TEMPLATE_HINT = 'quote values that start with "{{": prompt: "{{ inputs.x }}"'


class LoadAbort(Exception):
    """Building the document had to stop; carries the problem that says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@dataclass
class Document:
    """A parsed workflow file: its data (None when unreadable), positions and load problems."""

    path: str
    data: Any = None
    source: SourceMap = field(default_factory=SourceMap)
    problems: list[Problem] = field(default_factory=list)


def read_document(path: Path, *, max_bytes: int | None = MAX_FILE_BYTES) -> Document:
    """Read and parse a YAML (or JSON) file; every failure becomes a Problem, never an
    exception. Workflows are bounded in bytes; data files (inputs, cassettes) pass None."""
    display = str(path)
    too_large = "split the work into smaller workflows; keep large data in input files"
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            return _failed(
                display,
                f"file is {size:,} bytes; a workflow may be at most {MAX_FILE_BYTES:,}",
                "file-too-large",
                too_large,
            )
        with path.open("rb") as file:  # bounded: a device such as /dev/zero says size 0
            raw = file.read() if max_bytes is None else file.read(max_bytes + 1)
    except ValueError:
        return _failed(display, "cannot read file: its name holds a NUL byte", "unreadable")
    except OSError as error:
        return _failed(display, f"cannot read file: {error.strerror or error}", "unreadable")
    if max_bytes is not None and len(raw) > max_bytes:
        return _failed(
            display,
            f"file is more than {max_bytes:,} bytes; a workflow may be at most {MAX_FILE_BYTES:,}",
            "file-too-large",
            too_large,
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        return _failed(
            display,
            f"file is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start})",
            "not-utf8",
            "save the workflow as UTF-8",
            line=line,
        )
    return parse_document(text, display)


def parse_document(text: str, path: str = "<workflow>") -> Document:
    """Parse YAML text into a Document."""
    if "\x00" in text:
        offset = text.index("\x00")
        pos = SourceMap(path, text).offset_position(offset)
        return _failed(
            path,
            "file contains a NUL byte: it is not a text file",
            "not-text",
            line=pos.line,
            col=pos.col,
        )
    try:
        too_deep = _too_deep(text, path)
        if too_deep is not None:
            return Document(path, None, SourceMap(path), [too_deep])
        nodes = list(yaml.compose_all(text, Loader=Loader))
    except yaml.MarkedYAMLError as error:
        return _syntax_error(path, error)
    except yaml.YAMLError as error:
        return _failed(path, f"YAML syntax: {error}", "yaml-syntax")
    # a document that is only `---` or `null` holds no workflow either
    nodes = [node for node in nodes if node is not None and node.tag != "tag:yaml.org,2002:null"]
    if not nodes:
        return _failed(
            path,
            "file is empty",
            "empty-file",
            "start from an example: `lmflow schema` shows every key",
        )
    if len(nodes) > 1:
        # point at the `---` that starts the second document, not at its first key
        separators = list(re.finditer(r"^---", text[: nodes[1].start_mark.index], re.MULTILINE))
        offset = separators[-1].start() if separators else nodes[1].start_mark.index
        pos = SourceMap(path, text).offset_position(offset)
        return _failed(
            path,
            "file holds more than one YAML document",
            "multiple-documents",
            "keep one workflow per file; remove the `---` separator",
            line=pos.line,
            col=pos.col,
        )
    builder = _Builder(path, text)
    try:
        data = builder.build(nodes[0], ())
    except LoadAbort as abort:
        return Document(path, None, builder.source_map(), [abort.problem])
    return Document(path, data, builder.source_map(), builder.problems)


def too_deep_message(what: str) -> str:
    return f"{what} nesting is deeper than {MAX_NESTING} levels"


TOO_DEEP_HINT = "flatten the data, or keep deep data in a file a tool reads"


def nesting(value: Any) -> int:
    """How deep lists and mappings nest in plain data (walked without recursion)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, Mapping) else item
        if isinstance(item, (Mapping, list, tuple)):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                break  # deep enough to refuse; a self-containing list would never end
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(text: str, path: str) -> Problem | None:
    """The place where the lists and mappings nest past MAX_NESTING, from the event stream
    (flat, unlike composing)."""
    depth = 0
    for event in yaml.parse(text, Loader=Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                mark = event.start_mark
                line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                return Problem(
                    path,
                    line,
                    col,
                    too_deep_message("YAML"),
                    "yaml-too-deep",
                    TOO_DEEP_HINT,
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def _failed(
    path: str, message: str, rule: str, hint: str | None = None, *, line: int = 1, col: int = 1
) -> Document:
    return Document(path, None, SourceMap(path), [Problem(path, line, col, message, rule, hint)])


OPENINGS = ("quoted scalar", "flow sequence", "flow mapping", "simple key")
"""Constructs whose opening PyYAML names in its context: an unclosed quote or bracket is
found only where the parser gives up, often at the end of the file, far from the mistake."""


def _syntax_error(path: str, error: yaml.MarkedYAMLError) -> Document:
    """A syntax problem placed where the mistake is: at the opening of an unclosed quote or
    bracket (naming where the parser gave up), else where the parser gave up."""
    message = " ".join(filter(None, [error.context, error.problem])) or "invalid YAML"
    opening, gave_up = error.context_mark, error.problem_mark
    mark = gave_up or opening
    if opening is not None and any(kind in (error.context or "") for kind in OPENINGS):
        mark = opening
        if gave_up is not None:
            message += f" (the parser gave up at {gave_up.line + 1}:{gave_up.column + 1})"
    return _failed(
        path,
        f"YAML syntax: {message}",
        "yaml-syntax",
        _syntax_hint(message),
        line=mark.line + 1 if mark else 1,
        col=mark.column + 1 if mark else 1,
    )


def _syntax_hint(message: str) -> str | None:
    if "tab" in message.lower():
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in message:
        return "a value that contains ': ' must be quoted"
    if "found character '{'" in message or "found unhashable key" in message:
        return QUOTE_TEMPLATE_HINT
    if "quoted scalar" in message:
        return "close the quote that opens here (or quote the whole value with the other kind)"
    if "flow sequence" in message or "flow mapping" in message:
        return "close the bracket that opens here, or quote a value that starts with [ or {"
    if "expected '-' indicator" in message or "expected <block end>" in message:
        return "check the indentation: the keys of one list entry line up under its first key"
    return None


class _Builder:
    """Turns composed nodes into plain data, recording positions and duplicate keys."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.values: dict[JsonPath, Position] = {}
        self.keys: dict[JsonPath, Position] = {}
        self.problems: list[Problem] = []
        self.visited = 0
        self.building: set[int] = set()  # ids of the nodes between the root and here
        self.constructor = yaml.SafeLoader("")

    def source_map(self) -> SourceMap:
        return SourceMap(
            self.path, self.text, MappingProxyType(self.values), MappingProxyType(self.keys)
        )

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise LoadAbort(
                Problem(
                    self.path,
                    *self._line_col(node),
                    f"document expands to more than {MAX_NODES:,} nodes",
                    "yaml-too-large",
                    "YAML aliases (*name) that repeat large anchors multiply the document; "
                    "write the values out or shrink the file",
                )
            )
        if id(node) in self.building:
            raise LoadAbort(
                self._problem(
                    node,
                    "an alias (*name) is used inside the value its anchor (&name) marks: "
                    "the value would be infinite",
                    "yaml-alias-loop",
                    "write the inner value out instead of the alias",
                )
            )
        if len(path) > MAX_NESTING:  # aliases can nest deeper than the text shows
            raise LoadAbort(
                self._problem(node, too_deep_message("YAML"), "yaml-too-deep", TOO_DEEP_HINT)
            )
        self.values.setdefault(path, self._position(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        self.building.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.building.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(
                    self._problem(
                        key_node,
                        "YAML merge keys (<<) are not supported",
                        "yaml-merge-key",
                        "write the keys out; use `defaults:` for values shared by steps",
                    )
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    self._problem(
                        key_node,
                        "a key must be a plain name, not a list or mapping",
                        "non-scalar-key",
                        QUOTE_TEMPLATE_HINT,
                    )
                )
                continue
            key = key_node.value
            child = (*path, key)
            if key in result:
                first = self.keys[child]
                self.problems.append(
                    self._problem(
                        key_node,
                        f"duplicate key {key!r} (first at line {first.line}, column {first.col})",
                        "duplicate-key",
                        "YAML keeps only one of them; remove or rename the other",
                    )
                )
                continue
            self.keys[child] = self._position(key_node)
            result[key] = self.build(value_node, child)
        return result

    def _scalar(self, node: yaml.Node) -> Any:
        tag = node.tag
        if tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp"):
            return node.value  # a date stays the text the user wrote
        if tag in (
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:null",
        ):
            try:
                value = self.constructor.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, OverflowError):
                return node.value
            if isinstance(value, float) and not math.isfinite(value):
                self.problems.append(
                    self._problem(
                        node,
                        f"{node.value!r} is not a finite number",
                        "bad-value",
                        "JSON, and so LM Studio and MCP servers, cannot carry .nan or .inf; "
                        "write a plain number",
                    )
                )
            return node.value if isinstance(value, datetime.date) else value
        self.problems.append(
            self._problem(
                node,
                f"unsupported YAML tag {tag!r}",
                "yaml-tag",
                "remove the tag; lmflow reads plain strings, numbers, booleans, lists and maps",
            )
        )
        return node.value if isinstance(node.value, str) else None

    def _position(self, node: yaml.Node) -> Position:
        return Position(
            node.start_mark.line + 1,
            node.start_mark.column + 1,
            node.start_mark.index,
            node.end_mark.index,
        )

    def _line_col(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _problem(
        self, node: yaml.Node, message: str, rule: str, hint: str | None = None
    ) -> Problem:
        return Problem(self.path, *self._line_col(node), message, rule, hint)
