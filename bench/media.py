"""Benchmark media, generated once per machine with PyAV into bench/.cache (deterministic)."""

from __future__ import annotations

import os
from pathlib import Path

from mmprep.testing import make_video

CACHE = Path(os.environ.get("MMPREP_BENCH_CACHE", Path(__file__).parent / ".cache"))

# name -> make_video kwargs. 10 s 1080p at ~5 Mb/s with B-frames: long GOP and 1 s GOP.
CLIPS = {
    "h264_1080p_gop250": dict(codec="h264", width=1920, height=1080, frames=300, fps=30, gop=250, bframes=3, bitrate=5_000_000),
    "h264_1080p_gop30": dict(codec="h264", width=1920, height=1080, frames=300, fps=30, gop=30, bframes=3, bitrate=5_000_000),
    "hevc_1080p_gop250": dict(codec="hevc", width=1920, height=1080, frames=300, fps=30, gop=250, bframes=3, bitrate=5_000_000),
}


def clip_path(name: str) -> Path:
    """Path of a cached clip, encoding it first if this machine has not yet."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.{'webm' if CLIPS[name]['codec'] == 'vp9' else 'mp4'}"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(make_video(**CLIPS[name]))
        tmp.replace(path)
    return path
