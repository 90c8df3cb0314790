"""The rows of `lmflow batch`: read from JSONL or CSV one at a time, never all in memory.

Each row becomes the raw inputs of one run, named by `--map input=column` or else by the
input's own name; other columns are ignored. A row that cannot be read (bad JSON, not an
object) is kept with its problem, so it fails alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError


@dataclass(frozen=True)
class Row:
    """One row: its line in ROWS (the first line of a CSV record), and its raw inputs."""

    line: int
    inputs: dict[str, Any]
    problem: str | None = None
    """Why the row could not be read; its inputs are then empty."""


def parse_mapping(pairs: Iterable[str], declared: Iterable[str]) -> dict[str, str]:
    """`--map input=column` pairs as {input: column}; an unknown input is a mistake (exit 2)."""
    names = list(declared)
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise ConfigurationError(
                f"--map {pair!r} is not input=column", hint="write --map text=body"
            )
        if name not in names:
            raise ConfigurationError(
                f"--map {pair!r}: the workflow has no input {name!r}",
                hint=f"its inputs: {', '.join(names) or 'none'}",
            )
        mapping[name] = column
    return mapping


def read_rows(path: Path, inputs: Iterable[str], mapping: Mapping[str, str]) -> Iterator[Row]:
    """The rows of a `.csv` file (with a header) or else of a JSONL file, in file order."""
    columns = {name: mapping.get(name, name) for name in inputs}
    if path.suffix.lower() == ".csv":
        yield from _csv_rows(path, columns)
    else:
        yield from _jsonl_rows(path, columns)


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks: how `--resume` knows ROWS or the workflow changed."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _pick(record: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    return {name: record[column] for name, column in columns.items() if column in record}


def _jsonl_rows(path: Path, columns: Mapping[str, str]) -> Iterator[Row]:
    with path.open(encoding="utf-8") as stream:
        for number, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                yield Row(number, {}, f"not JSON: {error.msg} (col {error.colno})")
                continue
            if not isinstance(record, dict):
                kind = type(record).__name__
                yield Row(number, {}, f"a row must be a JSON object of inputs, not {kind}")
                continue
            yield Row(number, _pick(record, columns))


def _csv_rows(path: Path, columns: Mapping[str, str]) -> Iterator[Row]:
    """CSV values are text, typed as `-i` values are; an empty cell is a missing value (the
    input's default applies)."""
    with path.open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        absent = sorted({c for c in columns.values() if c not in header} & _mapped(columns))
        if absent:
            raise ConfigurationError(
                f"{path}:1: no column {', '.join(map(repr, absent))} in the header",
                hint=f"the columns: {', '.join(header) or 'none'}",
            )
        first_line = reader.line_num + 1
        for record in reader:
            values = {k: v for k, v in record.items() if k is not None and v not in ("", None)}
            yield Row(first_line, _pick(values, columns))
            first_line = reader.line_num + 1


def _mapped(columns: Mapping[str, str]) -> set[str]:
    """The columns `--map` named (an input's own name may simply be absent: its default)."""
    return {column for name, column in columns.items() if column != name}
