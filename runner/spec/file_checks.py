"""Why a path a workflow names cannot be read as a file, found before it is opened.

`stat` never blocks, unlike `open`: a pipe would wait forever for a writer, a device such as
/dev/zero never ends, and a NUL byte in a name is refused by the OS layer as a ValueError.
"""

from __future__ import annotations

import stat
from pathlib import Path


def not_a_file(path: Path) -> str | None:
    """The reason `path` is no regular file to read, or None when it is one or does not
    exist (reading it then reports the system's own reason)."""
    try:
        mode = path.stat().st_mode
    except ValueError:
        return "its name holds a NUL byte"
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if not stat.S_ISREG(mode):
        return "it is not a regular file (a pipe, socket or device)"
    return None
