"""The images an agent step sends with its prompt (`images:`), rendered and read.

Each entry renders to a file path (relative to the workflow file's directory, or absolute),
an http(s) URL or a `data:` URI, or to a list of them (a lone `{{ expr }}` keeps its type,
so one entry can hand on every image an earlier step saved). Files and data URIs are read
and checked here (runner/spec/image_files.py: type by content, size limit) and travel as
`Image`s; a URL is passed to the model server as it is, never fetched by lmflow, and one
that would carry a secret fails the step instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import templating
from .chat import Image
from .errors import StepFailedError
from .spec import image_files

HINT = (
    f"an image is a {image_files.KINDS} file (relative to the workflow file's directory, or "
    f"absolute) of at most {image_files.MAX_IMAGE_BYTES:,} bytes, an http(s) URL or a data: URI"
)


def step_images(
    entries: Sequence[str],
    context: Mapping[str, Any],
    workflow: Path,
    redact: Callable[[str], str],
) -> tuple[Image | str, ...]:
    """The images of `entries` in order: an `Image` for a file or data URI, a URL as text."""
    found: list[Image | str] = []
    for index, entry in enumerate(entries):
        rendered = templating.render_value(entry, context)
        values = rendered if isinstance(rendered, list) else [rendered]
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise StepFailedError(
                    f"images[{index}] gave {type(value).__name__} {value!r}, not an image",
                    hint=HINT,
                )
            found.append(_image(value.strip(), workflow, redact))
    return tuple(found)


def _image(value: str, workflow: Path, redact: Callable[[str], str]) -> Image | str:
    kind = image_files.kind_of(value)
    if kind == "url":
        if redact(value) != value:
            raise StepFailedError(
                "an image URL holds a secret: it would be sent to the model server as it is",
                hint="use a URL without credentials, or download the image and name the file",
            )
        return value
    try:
        if kind == "data":
            data, media_type = image_files.decode_data_uri(value)
        else:
            data, media_type = image_files.read_image(image_files.resolved(value, workflow))
    except image_files.ImageFileError as error:
        raise StepFailedError(str(error), hint=HINT) from None
    return Image(media_type, data)
