"""Bad inputs shared by the CPU and GPU hostile-input tests: name -> (bytes, kwargs, error type)."""

from __future__ import annotations

import io

import av
import numpy as np

import mmprep

from .helpers import clip


def audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def faststart_clip() -> bytes:
    """An mp4 with its index first, so a cut leaves a readable index pointing past the end."""
    import os
    import tempfile

    import mmprep.testing as t

    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 322, 242, "yuv420p"
        s.options = {"preset": "veryfast"}
        for i in range(24):
            for p in s.encode(av.VideoFrame.from_ndarray(t.synthetic_frame(i, 322, 242), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def payload_zeroed(data: bytes) -> bytes:
    """The container intact (so the probe passes), every coded byte zeroed: fails inside the decoder."""
    import struct

    b = bytearray(data)
    off = 0
    while off + 8 <= len(b):
        size, kind = struct.unpack(">I4s", b[off : off + 8])
        if kind == b"mdat":
            b[off + 8 : off + size] = bytes(size - 8)
            return bytes(b)
        if size < 8:
            break
        off += size
    raise ValueError("no mdat box")


def cases() -> dict[str, tuple[bytes, dict, type]]:
    good = clip("h264", frames=24)
    fast = faststart_clip()
    rng = np.random.default_rng(1234)
    return {
        "empty": (b"", {}, mmprep.EmptyMediaError),
        "random": (rng.integers(0, 256, 20000, dtype=np.uint8).tobytes(), {}, mmprep.MediaError),
        "random_small": (rng.integers(0, 256, 37, dtype=np.uint8).tobytes(), {}, mmprep.MediaError),
        "text": (b"this is not a video at all\n" * 50, {}, mmprep.MediaError),
        "truncated_half": (good[: len(good) // 2], {}, mmprep.CorruptMediaError),
        "truncated_header": (good[:64], {}, mmprep.CorruptMediaError),
        "truncated_faststart": (fast[: int(len(fast) * 0.6)], {}, mmprep.CorruptMediaError),
        "no_video_stream": (audio_only(), {}, mmprep.NoVideoStreamError),
        "over_max_pixels": (good, {"max_pixels": 320 * 240}, mmprep.MediaTooLargeError),
        "over_max_frames": (good, {"max_frames": 5}, mmprep.TooManyFramesError),
        "payload_zeroed": (payload_zeroed(good), {}, mmprep.CorruptMediaError),  # passes the probe
    }
