"""Prompt files: `prompt_file:` and `system_file:` read into the `prompt` and `system` they
stand for, before anything else reads the step.

A file's text is the field's text: it renders with the same context, and a changed file
changes the step's fingerprint and its requests as an edited inline prompt would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

FILE_KEYS = {"prompt": "prompt_file", "system": "system_file"}
"""Each text field and the key that names a file holding it."""

Reader = Callable[[str, Path], str | None]
"""Reads the file a key names (the key, the resolved path); None: it could not be read."""


def resolved(name: str, workflow: Path) -> Path:
    """Where a prompt file is: relative to the workflow file's directory."""
    return workflow.parent / name


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def with_file_texts(data: Any, workflow: Path, read: Reader) -> Any:
    """A step's (or an agent's) data with each `*_file` key replaced by the text field it
    stands for; a text written inline wins (writing both is the validator's to report)."""
    if not isinstance(data, Mapping) or not any(k in data for k in FILE_KEYS.values()):
        return data
    result = {k: v for k, v in data.items() if k not in FILE_KEYS.values()}
    for text_key, file_key in FILE_KEYS.items():
        name = data.get(file_key)
        if isinstance(name, str) and text_key not in data:
            text = read(file_key, resolved(name, workflow))
            if text is not None:
                result[text_key] = text
    return result


def text_key_at(data: Any, key: str) -> str:
    """The key that spells a text field in `data`: the field, or the file key naming it."""
    file_key = FILE_KEYS.get(key)
    if file_key is not None and isinstance(data, Mapping) and key not in data and file_key in data:
        return file_key
    return key


def spells(data: Any, key: str) -> bool:
    """Whether `data` sets `key` itself, inline or through a file."""
    return isinstance(data, Mapping) and text_key_at(data, key) in data
