"""Positions in a workflow file: where each YAML node (and each mapping key) was written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    """A 1-based line and column, plus the node's character range in the file text."""

    line: int
    col: int
    start: int = 0
    end: int = 0


START = Position(1, 1)


@dataclass(frozen=True)
class SourceMap:
    """Positions of every node of a document, addressed by JSON path.

    `values` maps the path of a node to where its value starts; `keys` maps the path of a
    mapping entry to where its key was written (the natural place to report an unknown or
    misspelled key). Lookups fall back to the nearest ancestor that has a position.
    """

    path: str = "<workflow>"
    text: str = ""
    values: Mapping[JsonPath, Position] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[JsonPath, Position] = field(default_factory=lambda: MappingProxyType({}))

    def position(self, path: JsonPath) -> Position:
        """Where the value at `path` starts, or the nearest ancestor's position."""
        return self._lookup(self.values, path)

    def key_position(self, path: JsonPath) -> Position:
        """Where the key of the entry at `path` was written (its value's spot as a fallback)."""
        if path in self.keys:
            return self.keys[path]
        return self.position(path)

    def raw(self, path: JsonPath) -> str:
        """The exact text of the node at `path` as written in the file."""
        pos = self.values.get(path)
        return self.text[pos.start : pos.end] if pos else ""

    def offset_position(self, offset: int) -> Position:
        """The line and column of a character offset in the file text."""
        line = self.text.count("\n", 0, offset) + 1
        col = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return Position(line, col, offset, offset)

    @staticmethod
    def _lookup(table: Mapping[JsonPath, Position], path: JsonPath) -> Position:
        for end in range(len(path), -1, -1):
            found = table.get(path[:end])
            if found is not None:
                return found
        return START
