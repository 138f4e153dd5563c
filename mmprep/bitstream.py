"""Read NAL unit headers from H.264 / HEVC packets to find frames nothing else references.

A packet whose every picture slice is a non-reference picture (H.264 ``nal_ref_idc == 0``;
HEVC sub-layer non-reference types TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N at the highest
temporal layer) cannot affect any other frame, so a sampler may skip decoding it.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["nal_length_size", "iter_nal_headers", "DisposableScanner"]

_HEVC_NON_REF = frozenset({0, 2, 4, 6, 8, 10, 12, 14})


def nal_length_size(codec: str, extradata: bytes | None) -> int:
    """Bytes of the length prefix of each NAL in packets (0 means Annex B start codes)."""
    if not extradata or extradata[:3] == b"\x00\x00\x01" or extradata[:4] == b"\x00\x00\x00\x01":
        return 0
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21:
        return (extradata[21] & 3) + 1
    return 0


def iter_nal_headers(data: bytes, length_size: int) -> Iterator[bytes]:
    """Yield the first two bytes of each NAL unit in ``data`` (length-prefixed or Annex B)."""
    n = len(data)
    if length_size:
        i = 0
        while i + length_size < n:
            size = int.from_bytes(data[i : i + length_size], "big")
            i += length_size
            if size <= 0 or i + size > n:
                return
            yield data[i : i + 2]
            i += size
        return
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        yield data[i + 3 : i + 5]
        i = data.find(b"\x00\x00\x01", i + 3)


def _h264_disposable(data: bytes, length_size: int) -> bool:
    saw_slice = False
    for h in iter_nal_headers(data, length_size):
        if not h:
            continue
        nal_type = h[0] & 0x1F
        if 1 <= nal_type <= 5:
            saw_slice = True
            if (h[0] >> 5) & 3:
                return False
    return saw_slice


def _hevc_slice_info(data: bytes, length_size: int) -> tuple[bool, int]:
    """(every slice is sub-layer non-reference, highest temporal id) of one HEVC packet."""
    non_ref = None
    tid = 0
    for h in iter_nal_headers(data, length_size):
        if len(h) < 2:
            continue
        nal_type = (h[0] >> 1) & 0x3F
        if nal_type < 32:
            tid = max(tid, (h[1] & 7) - 1)
            this = nal_type in _HEVC_NON_REF
            non_ref = this if non_ref is None else (non_ref and this)
    return bool(non_ref), tid


class DisposableScanner:
    """Feed packets in decode order with ``add``; ``flags()`` says which ones may be skipped."""

    def __init__(self, codec: str, extradata: bytes | None) -> None:
        self.codec = codec
        self.length_size = nal_length_size(codec, extradata)
        self._h264: list[bool] = []
        self._hevc: list[tuple[bool, int]] = []

    def add(self, data: bytes) -> None:
        if self.codec == "h264":
            self._h264.append(_h264_disposable(data, self.length_size))
        elif self.codec == "hevc":
            self._hevc.append(_hevc_slice_info(data, self.length_size))

    def flags(self, count: int) -> list[bool]:
        if self.codec == "h264":
            return self._h264
        if self.codec == "hevc":
            # Only the top temporal sub-layer is safe to drop: lower non-reference
            # pictures may still be referenced by higher sub-layers.
            top = max((t for _, t in self._hevc), default=0)
            return [nr and t == top for nr, t in self._hevc]
        return [False] * count
