"""The images a step sends to a vision model: what an `images:` entry names, and the check
that a file is an image lmflow may send.

Offline and pure, so `lmflow validate` checks a literal path with exactly the rules a run
applies to a rendered one: the type is read from the first bytes (never the file name), and
a file above the size limit is refused before it is read.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

from .file_checks import not_a_file

MAX_IMAGE_BYTES = 10 * 1024 * 1024
"""The largest image a step sends: a few megapixels as PNG. Larger ones are mostly a
mistake (a raw scan, a video frame dump), and travel base64-encoded in every request."""

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
KINDS = "PNG, JPEG, GIF or WebP"

EntryKind = Literal["url", "data", "file"]


class ImageFileError(ValueError):
    """An image that cannot be sent; the message names it and says why."""


def kind_of(entry: str) -> EntryKind:
    """What an `images:` entry is: an http(s) URL, a `data:` URI, or a file path."""
    lowered = entry.lstrip().lower()
    if lowered.startswith(("http://", "https://")):
        return "url"
    if lowered.startswith("data:"):
        return "data"
    return "file"


def sniff(data: bytes) -> str | None:
    """The media type the first bytes say, or None when they are no image lmflow sends."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def resolved(entry: str, workflow: Path) -> Path:
    """Where a file entry is: relative to the workflow file's directory, or absolute. A
    `file://` URL is refused rather than read as a relative path named `file:`."""
    if entry.lstrip().lower().startswith("file:"):
        raise ImageFileError(
            f"image {entry!r} is a file: URL, which lmflow does not read; write the file's "
            "path itself (absolute, or relative to the workflow file)"
        )
    return workflow.parent / Path(entry).expanduser()


def read_image(path: Path, limit: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """The bytes and media type of an image file; `ImageFileError` when it is missing, too
    large (checked before reading) or not an image."""
    reason = not_a_file(path)
    if reason is not None:
        raise ImageFileError(f"image {path} cannot be read: {reason}")
    try:
        size = path.stat().st_size
        if size > limit:
            raise ImageFileError(
                f"image {path} is {size:,} bytes, above the limit of {limit:,} bytes"
            )
        data = path.read_bytes()
    except ImageFileError:
        raise
    except OSError as error:
        raise ImageFileError(f"image {path} cannot be read: {error.strerror or error}") from None
    return data, _checked(data, f"image {path}")


def decode_data_uri(uri: str, limit: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """The bytes and media type of a `data:image/...;base64,...` URI, checked as a file is."""
    head, comma, payload = uri.strip().partition(",")
    if not comma or not head.lower().endswith(";base64"):
        raise ImageFileError(f"data URI {head[:40]!r}... is not base64 (data:image/png;base64,...)")
    if len(payload) * 3 // 4 > limit:
        raise ImageFileError(
            f"data URI image is about {len(payload) * 3 // 4:,} bytes, above the limit of "
            f"{limit:,} bytes"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageFileError("data URI image is not valid base64") from None
    return data, _checked(data, "data URI image")


def _checked(data: bytes, what: str) -> str:
    media_type = sniff(data)
    if media_type is None:
        raise ImageFileError(f"{what} is not a {KINDS} image (by its content)")
    return media_type
