"""A tool result (or a server prompt's messages) as the text a model reads, with its binary
content saved as files.

A model reads text. Text blocks and embedded text resources are joined; a resource link is
named by its URI; images, audio and binary resources are written to `content_dir` (the run
directory's `mcp-content/`, named by a hash of their bytes, so the same content is one file)
and named by their path, so a later step or tool can use them. Without a `content_dir` (a
run that keeps no files) they are named by their type only.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    GetPromptResult,
    ImageContent,
    ReadResourceResult,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from .chat import Image, ToolResult
from .content_files import saved
from .spec.image_files import sniff


def tool_result(result: CallToolResult, content_dir: Path | None = None) -> ToolResult:
    """Text for the model: text blocks joined, other content named (and saved, see above)."""
    parts = [_block_text(block, content_dir) for block in result.content]
    images = [
        image
        for block in result.content
        if isinstance(block, ImageContent) and (image := _image(block)) is not None
    ]
    structured = result.structured_content
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return ToolResult(
        "\n".join(parts),
        is_error=bool(result.is_error),
        structured=structured,
        images=tuple(images),
    )


def prompt_result(result: GetPromptResult, content_dir: Path | None = None) -> ToolResult:
    """A server prompt's messages, each as `{role, content}` with its content as text (see
    runner/server_prompts.py), in `structured`; the text shows them one after the other."""
    messages = [
        {"role": message.role, "content": _block_text(message.content, content_dir)}
        for message in result.messages
    ]
    text = "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)
    return ToolResult(text, structured={"messages": messages})


def _block_text(block: ContentBlock, content_dir: Path | None) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ResourceLink):
        return f"[resource link: {block.uri}]"
    if isinstance(block, EmbeddedResource):
        return _resource_text(block.resource, content_dir)
    if isinstance(block, ImageContent | AudioContent):
        return _binary(f"{block.type} content", block.data, block.mime_type, content_dir)
    return f"[{block.type} content]"  # a kind of content newer than this code


def resource_result(result: ReadResourceResult, content_dir: Path | None = None) -> ToolResult:
    """A resource read, as text for the model: its text parts, its binary parts saved."""
    return ToolResult("\n".join(_resource_text(part, content_dir) for part in result.contents))


def _resource_text(
    resource: TextResourceContents | BlobResourceContents, content_dir: Path | None
) -> str:
    if isinstance(resource, TextResourceContents):
        return resource.text
    label = f"binary resource: {resource.uri}"
    return _binary(label, resource.blob, resource.mime_type, content_dir)


def _binary(label: str, data: str, mime: str | None, content_dir: Path | None) -> str:
    """`[label: mime]`, and where the decoded bytes were saved when there is a place."""
    described = f"{label}: {mime}" if mime else label
    if content_dir is None:
        return f"[{described}]"
    raw = _decoded(data)
    if raw is None:
        return f"[{described}, not valid base64: not saved]"
    return f"[{described}, saved to {saved(content_dir, raw, mime)}]"


def _decoded(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _image(block: ImageContent) -> Image | None:
    """The image a vision model may be shown: valid base64 of a type lmflow sends."""
    raw = _decoded(block.data)
    media_type = sniff(raw) if raw is not None else None
    return Image(media_type, raw) if raw is not None and media_type is not None else None
