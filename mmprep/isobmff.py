"""Just enough of the MP4/MOV box structure (ISO-BMFF) to read what FFmpeg uses but PyAV does not expose:
the video track's display matrix and its edit list. A damaged box ends the walk (the facts read as absent).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["video_track_matrix", "video_edit_count"]


def _boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """ISO-BMFF boxes in ``buf[start:end]``: (type, payload start, box end); stops at a damaged header."""
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, off)
        header = 8
        if size == 1:
            if off + 16 > end:
                return
            size, header = struct.unpack_from(">Q", buf, off + 8)[0], 16
        elif size == 0:
            size = end - off
        if size < header or off + size > end:
            return
        yield kind, off + header, off + size
        off += size


def _video_trak(buf: bytes) -> tuple[int, int] | None:
    """(start, end) of the payload of the first video track's ``trak`` box, or None."""
    for kind, start, end in _boxes(buf, 0, len(buf)):
        if kind != b"moov":
            continue
        for trak, t0, t1 in _boxes(buf, start, end):
            if trak == b"trak" and any(
                box == b"mdia" and any(h == b"hdlr" and buf[h0 + 8 : h0 + 12] == b"vide" for h, h0, _ in _boxes(buf, b0, b1))
                for box, b0, b1 in _boxes(buf, t0, t1)
            ):
                return t0, t1
        return None
    return None


def video_track_matrix(buf: bytes) -> tuple[int, ...] | None:
    """The 3x3 ``tkhd`` matrix of the first video track of an MP4/MOV file, or None."""
    trak = _video_trak(buf)
    if trak is None:
        return None
    for box, b0, b1 in _boxes(buf, *trak):
        if box == b"tkhd" and b1 - b0 >= 84:
            fixed = 32 if buf[b0] == 1 else 20  # version 1: 64-bit times and duration
            at = b0 + 4 + fixed + 16  # then reserved(8) layer alt_group volume reserved(2)
            if at + 36 <= b1:
                return struct.unpack_from(">9i", buf, at)
    return None


def video_edit_count(buf: bytes) -> int:
    """Entries in the first video track's edit list (0 without one; MP4/MOV only)."""
    trak = _video_trak(buf)
    if trak is None:
        return 0
    for box, b0, b1 in _boxes(buf, *trak):
        if box == b"edts":
            for e, e0, e1 in _boxes(buf, b0, b1):
                if e == b"elst" and e0 + 8 <= e1:
                    return struct.unpack_from(">I", buf, e0 + 4)[0]
    return 0
