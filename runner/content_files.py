"""Binary content kept as files named by a hash of their bytes: the same content is one file.

The run directory's `mcp-content/` holds what MCP tools returned (images, audio, binary
resources), and a cassette's `<name>.images/` the images its exchanges carried; a replay
writes the recorded images back into its own run directory, so a path a tool result names
exists in a replay as in the recorded run.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path


def content_name(data: bytes, media_type: str | None) -> str:
    """`<16 hex digits of the SHA-256><extension>`: the same name on every machine."""
    return f"{hashlib.sha256(data).hexdigest()[:16]}{extension(media_type)}"


def saved(directory: Path, data: bytes, media_type: str | None) -> Path:
    """The file holding `data` in `directory`, written unless it is there already."""
    path = directory / content_name(data, media_type)
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return path


def extension(mime: str | None) -> str:
    """`.png` for image/png, `.svg` for image/svg+xml, `.wav` for audio/x-wav: the subtype
    when it is a plain word (the same on every machine), else what the system knows."""
    subtype = (mime or "").partition("/")[2].split("+")[0].split(";")[0].strip().lower()
    subtype = subtype.removeprefix("x-")
    if subtype.isalnum() and len(subtype) <= 10:
        return f".{subtype}"
    return (mimetypes.guess_extension(mime) if mime else None) or ".bin"
