"""The rows of `lmflow batch`: read from JSONL or CSV one at a time, never all in memory.

Each row becomes the raw inputs of one run, named by `--map input=column` or else by the
input's own name; other columns are ignored. A row that cannot be read (bad JSON, not an
object) is kept with its problem, so it fails alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield Row(number, {}, f"not UTF-8 text (byte {error.start + 1})")
                continue
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
    with path.open("rb") as stream:
        reader = csv.DictReader(_utf8_lines(path, stream))
        try:
            _check_header(path, reader.fieldnames or [], columns)
            first_line = reader.line_num + 1
            for record in reader:
                values = {k: v for k, v in record.items() if k is not None and v not in ("", None)}
                yield Row(first_line, _pick(values, columns))
                first_line = reader.line_num + 1
        except csv.Error as error:
            raise ConfigurationError(
                f"{path}:{reader.line_num}: not valid CSV ({error})",
                hint="save ROWS as CSV with a header line, or as JSONL",
            ) from None


def _utf8_lines(path: Path, stream: IO[bytes]) -> Iterator[str]:
    """The lines of a binary stream as text, so a bad byte is placed on its own line."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigurationError(
                f"{path}:{number}: not UTF-8 text (byte {error.start + 1} of the line)",
                hint="save ROWS as UTF-8",
            ) from None


def _check_header(path: Path, header: Sequence[str], columns: Mapping[str, str]) -> None:
    """A column `--map` names must be in the header (an input's own name may be absent: its
    default applies, or the row is reported as missing it)."""
    mapped = {column for name, column in columns.items() if column != name}
    absent = sorted(mapped - set(header))
    if absent:
        raise ConfigurationError(
            f"{path}:1: no column {', '.join(map(repr, absent))} in the header",
            hint=f"the columns: {', '.join(header) or 'none'}",
        )
