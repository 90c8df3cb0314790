"""Small PNG images made in code, for the image tests and the example's sample chart.

No imaging library: a PNG is a signature, an IHDR chunk, zlib-compressed rows and IEND.
The same pixels give the same bytes on every machine.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

Pixel = tuple[int, int, int]


def png(width: int, height: int, color: Callable[[int, int], Pixel]) -> bytes:
    """An 8-bit RGB PNG whose pixel at (x, y) is `color(x, y)`."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(color(x, y)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


def solid(width: int, height: int, pixel: Pixel = (200, 30, 30)) -> bytes:
    return png(width, height, lambda _x, _y: pixel)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
