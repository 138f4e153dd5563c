"""Turn what a caller hands us (bytes, path, file object) into one immutable ``bytes``."""

from __future__ import annotations

import os
from typing import BinaryIO, Union

from .errors import EmptyMediaError, MediaTooLargeError

__all__ = ["Source", "read_source"]

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]


def read_source(source: Source, *, max_bytes: int) -> bytes:
    """Return the encoded bytes of ``source``; refuse empty or over-``max_bytes`` input."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        size = os.path.getsize(path)
        if size > max_bytes:
            raise MediaTooLargeError(f"file {path!r} is {size} bytes, over max_bytes={max_bytes}")
        with open(path, "rb") as f:
            data = f.read()
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"source.read() must return bytes, got {type(data).__name__}")
        data = bytes(data)
    else:
        raise TypeError(
            "source must be bytes, bytearray, memoryview, a path or a binary file object, "
            f"got {type(source).__name__}"
        )
    if len(data) == 0:
        raise EmptyMediaError("source is empty (0 bytes)")
    if len(data) > max_bytes:
        raise MediaTooLargeError(f"source is {len(data)} bytes, over max_bytes={max_bytes}")
    return data
