"""Display rotation of a video: read from the container, applied to decoded frames on their device.

Phones store frames as the sensor saw them and record how to show them in the MP4/MOV track header
(the ``tkhd`` matrix), which FFmpeg exposes as the stream's display matrix. OpenCV — vLLM's default
loader — rotates by the angle FFmpeg derives from that matrix (``av_display_rotation_get``) and does
not apply mirror flips; mmprep does the same, so both return the same frames.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

import torch

__all__ = ["display_rotation", "apply_rotation"]


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


def _video_tkhd_matrix(buf: bytes) -> tuple[int, ...] | None:
    """The 3x3 ``tkhd`` matrix of the first video track of an MP4/MOV file, or None."""
    for kind, start, end in _boxes(buf, 0, len(buf)):
        if kind != b"moov":
            continue
        for trak, t0, t1 in _boxes(buf, start, end):
            if trak != b"trak":
                continue
            matrix, video = None, False
            for box, b0, b1 in _boxes(buf, t0, t1):
                if box == b"tkhd" and b1 - b0 >= 84:
                    fixed = 32 if buf[b0] == 1 else 20  # version 1: 64-bit times and duration
                    at = b0 + 4 + fixed + 16  # reserved(8) layer alt_group volume reserved(8)
                    if at + 36 <= b1:
                        matrix = struct.unpack_from(">9i", buf, at)
                elif box == b"mdia":
                    video = any(h == b"hdlr" and buf[h0 + 8 : h0 + 12] == b"vide"
                                for h, h0, _ in _boxes(buf, b0, b1))
            if video:
                return matrix
        return None
    return None


def display_rotation(data: bytes, container: str) -> int:
    """Counter-clockwise degrees (0, 90, 180 or -90) the first video track is to be shown rotated by.

    FFmpeg's rule: ``-atan2(b, a)`` of the matrix columns' unit vectors, rounded to a quarter turn.
    Containers other than MP4/MOV (which carry no track matrix) give 0.
    """
    if "mp4" not in container and "mov" not in container:
        return 0
    m = _video_tkhd_matrix(data)
    if m is None:
        return 0
    a, b, c, d = m[0], m[1], m[3], m[4]
    s0, s1 = math.hypot(a, c), math.hypot(b, d)
    if s0 == 0 or s1 == 0:
        return 0
    angle = -math.degrees(math.atan2(b / s1, a / s0))
    quarter = round(angle / 90) % 4
    return (0, 90, 180, -90)[quarter]


def apply_rotation(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """(T,H,W,C) frames turned counter-clockwise by ``rotation`` degrees, on their device, contiguous."""
    k = (rotation // 90) % 4
    if k == 0:
        return frames
    return torch.rot90(frames, k, dims=(1, 2)).contiguous()
