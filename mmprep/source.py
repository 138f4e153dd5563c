"""Turn what a caller hands us (bytes, buffer, path, file object) into bytes to decode, and those into a file."""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

from .errors import EmptyMediaError, MediaTooLargeError

__all__ = ["Source", "read_source", "open_buffer"]

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]


def read_source(source: Source, *, max_bytes: int) -> bytes | memoryview:
    """Return the encoded bytes of ``source``; refuse empty or over-``max_bytes`` input.

    A contiguous ``memoryview`` is read in place, not copied (the media service decodes its callers' bytes
    straight from shared memory): it must not change until the call returns."""
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, memoryview) and source.c_contiguous:
        data = source.cast("B") if source.format != "B" or source.ndim != 1 else source
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


class _ViewFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview that does not copy it up front (``io.BytesIO`` would)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        out = self._view[self._pos:end].tobytes() if end > self._pos else b""
        self._pos = max(self._pos, end)
        return out

    def readinto(self, b) -> int:  # noqa: ANN001 - any writable buffer
        n = max(0, min(len(b), len(self._view) - self._pos))
        b[:n] = self._view[self._pos:self._pos + n]  # straight from the view: no bytes object in between
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def open_buffer(data: bytes | memoryview) -> BinaryIO:
    """``data`` (what ``read_source`` returned) as a file for PyAV, without copying it."""
    return io.BytesIO(data) if isinstance(data, bytes) else _ViewFile(data)  # BytesIO shares bytes, copies views
