"""Large tool results: how much of one reaches the model, and where the whole of it is kept.

A tool may answer with megabytes (a log, a table, a file). A local model cannot use more
than its context holds, so it gets the first `limit` characters and a note that says how
much was cut and where the whole result is. The whole result travels with the
`tool_result` event as `full_content`, so it is masked like every event field; the JSONL
writer moves it into a file of its own beside events.jsonl, so the log line stays small.
The file is named by the content: a run and its replay cut and name a result alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .chat import Image, ToolResult

RESULTS_DIR = "results"
FULL_CONTENT = "full_content"
"""The event field with a cut result's whole text: in memory only, never written in a line."""


def result_file(text: str) -> str:
    """Where the whole `text` is kept, relative to the run log's directory."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{RESULTS_DIR}/{digest}.txt"


def capped(result: ToolResult, limit: int) -> ToolResult:
    """`result` with at most `limit` characters of text plus a note; the whole text stays in
    `full_text`. A result within the limit is returned as it is."""
    shown = cut(result.text, limit)
    return result if shown == result.text else replace(result, text=shown, full_text=result.text)


def cut(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, and a note saying how much was cut and which
    file beside the run log holds the whole (`full_result_fields` puts it there)."""
    if len(text) <= limit:
        return text
    return text[:limit] + (
        f"\n[... {len(text) - limit:,} more characters cut (the result has {len(text):,}); "
        f"the full result is in {result_file(text)} beside the run log]"
    )


def full_result_fields(full_text: str | None) -> dict[str, Any]:
    """The `tool_result` event fields for a cut result: its file, its size, its whole text."""
    if full_text is None:
        return {}
    return {
        "full_result": result_file(full_text),
        "full_chars": len(full_text),
        FULL_CONTENT: full_text,
    }


def image_fields(images: Sequence[Image]) -> dict[str, Any]:
    """The `tool_result` event field for a result with images: each by its reference (hash,
    type, size), never its data."""
    return {"images": [image.reference() for image in images]} if images else {}
