"""Which frames to return, and which packets must be decoded to produce them.

Indices follow vLLM's uniform loader exactly (``num_frames`` and/or ``fps``, the fewer wins),
so results are comparable with ``VLLM_VIDEO_LOADER_BACKEND=opencv``. The decode plan then
feeds the decoder as little as possible: only the GOPs holding a sampled frame, only up to
the last sampled frame of each, and never a non-reference frame that is not itself sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .probe import Probe

__all__ = ["sample_indices", "DecodePlan", "plan_decode", "split_feed"]


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, -1 or None, got {value!r}")


def sample_indices(
    total_frames: int, duration: float, *, num_frames: int | None = None, fps: float | None = None
) -> list[int]:
    """Frame indices vLLM's uniform loader would pick: ``num_frames`` spread evenly, or one per
    ``1/fps`` seconds, whichever gives fewer; neither (None or -1) means every frame."""
    if num_frames is not None:
        _check_count("num_frames", num_frames)
        if num_frames == 0 or (num_frames < 0 and num_frames != -1):
            raise ValueError(f"num_frames must be a positive integer, -1 or None, got {num_frames}")
        if num_frames != int(num_frames):
            raise ValueError(f"num_frames must be an integer, got {num_frames}")
    if fps is not None:
        _check_count("fps", fps)
        if fps == 0 or (fps < 0 and fps != -1):
            raise ValueError(f"fps must be > 0, -1 or None, got {fps}")
    if total_frames <= 0:
        return []
    n = total_frames
    if num_frames is not None and num_frames > 0:
        n = min(int(num_frames), total_frames)
    if fps is not None and fps > 0:
        n = min(n, math.floor(duration * fps))
    n = max(1, n)
    if n == total_frames:
        return list(range(n))
    return np.linspace(0, total_frames - 1, n, dtype=int).tolist()


@dataclass(frozen=True)
class DecodePlan:
    """Packets (decode-order ordinals) to send to a decoder, and where each result goes."""

    feed: list[int]
    """Packet ordinals to decode, ascending."""
    slots: dict[int, list[int]]
    """Packet ordinal of a wanted frame -> positions in the output it fills."""
    sequential: bool
    """No usable timestamps: every packet up to the last wanted one is fed and output
    frames are matched by their order (the n-th output frame is display frame n)."""


def check_indices(indices: list[int], num_frames: int) -> None:
    """``indices`` must be a non-empty list of display frames of a ``num_frames``-frame stream."""
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad or not indices:
        raise ValueError(f"indices must be a non-empty list within [0, {num_frames - 1}], got {bad or indices}")


def plan_decode(probe: Probe, indices: list[int]) -> DecodePlan:
    """Plan the minimal decode producing display frames ``indices`` (in that output order)."""
    check_indices(indices, probe.stream.num_frames)
    pkt_of = probe.packet_of_frame()
    slots: dict[int, list[int]] = {}
    for pos, d in enumerate(indices):
        slots.setdefault(pkt_of[d], []).append(pos)
    if not slots:
        return DecodePlan(feed=[], slots={}, sequential=not probe.by_pts)
    if not probe.by_pts:
        last = max(slots)
        return DecodePlan(feed=list(range(last + 1)), slots=slots, sequential=True)

    gop_start = []
    g = 0
    for p, k in enumerate(probe.keyframe):
        if k:
            g = p
        gop_start.append(g)
    pts = probe.pts
    need: dict[int, int] = {}  # gop start -> last packet needed in it
    for p in slots:
        g = gop_start[p]
        need[g] = max(need.get(g, -1), p)
        if g > 0 and pts[p] < pts[g]:
            # A leading picture (shown before its keyframe) may reference the previous GOP.
            prev = gop_start[g - 1]
            need[prev] = g - 1
    feed: list[int] = []
    disposable = probe.disposable
    for g in sorted(need):
        for p in range(max(g, feed[-1] + 1 if feed else 0), need[g] + 1):
            if disposable[p] and p not in slots:
                continue
            feed.append(p)
    return DecodePlan(feed=feed, slots=slots, sequential=False)


def split_feed(probe: Probe, plan: DecodePlan, min_part: int = 24) -> tuple[list[int], list[int]] | None:
    """Cut ``plan.feed`` at a keyframe into two halves that two decoders can run at once, or None.

    A cut at keyframe ``k`` is sound when no fed packet of ``k``'s group is a leading picture (shown
    before ``k``: it may reference the group before, which the second decoder never sees); decode-order
    references never point forward, so the first half needs nothing of the second. Of the sound cuts,
    the most even one, if its smaller half has ``min_part`` packets or more."""
    feed = plan.feed
    if plan.sequential or len(feed) < 2 * min_part:
        return None
    key, pts = probe.keyframe, probe.pts
    group, leading = -1, False
    sound: list[int] = []  # feed positions of keyframes whose group feeds no leading picture
    for i, p in enumerate(feed):
        if key[p]:
            if group >= 0 and not leading:
                sound.append(group)
            group, leading = i, False
        elif group >= 0:  # a packet without a timestamp counts as leading: no cut in its group
            k = pts[feed[group]]
            leading = leading or pts[p] is None or k is None or pts[p] < k
    if group >= 0 and not leading:
        sound.append(group)
    cuts = [i for i in sound if i > 0 and min(i, len(feed) - i) >= min_part]
    if not cuts:
        return None
    best = min(cuts, key=lambda i: max(i, len(feed) - i))
    return feed[:best], feed[best:]
