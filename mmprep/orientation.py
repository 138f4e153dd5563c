"""Display rotation of a video: read from the container, applied to decoded frames on their device.

Phones store frames as the sensor saw them and record how to show them in the MP4/MOV track header
(the ``tkhd`` matrix), which FFmpeg exposes as the stream's display matrix. OpenCV — vLLM's default
loader — rotates by the angle FFmpeg derives from that matrix (``av_display_rotation_get``) and does
not apply mirror flips; mmprep does the same, so both return the same frames.
"""

from __future__ import annotations

import math

import torch

from .isobmff import video_track_matrix

__all__ = ["display_rotation", "apply_rotation"]


def display_rotation(data: bytes, container: str) -> int:
    """Counter-clockwise degrees (0, 90, 180 or -90) the first video track is to be shown rotated by.

    FFmpeg's rule: ``-atan2(b, a)`` of the matrix columns' unit vectors, rounded to a quarter turn.
    Containers other than MP4/MOV (which carry no track matrix) give 0.
    """
    if "mp4" not in container and "mov" not in container:
        return 0
    m = video_track_matrix(data)
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
