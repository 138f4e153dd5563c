"""Synthetic media for tests, benchmarks and examples, encoded on the fly with PyAV.

Each frame carries its own index as a row of black/white blocks (robust to lossy coding),
over a moving colour gradient so chroma and motion are exercised. ``read_index`` reads it back.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["ENCODERS", "make_video", "synthetic_frame", "read_index", "INDEX_BITS"]

INDEX_BITS = 10
# codec name -> (PyAV encoder, container format, encoder options builder)
ENCODERS = {
    "h264": ("libx264", "mp4"),
    "hevc": ("libx265", "mp4"),
    "vp9": ("libvpx-vp9", "webm"),
    "av1": ("libsvtav1", "mp4"),
}


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """(H,W,3) uint8 frame: index bits in the top quarter, a moving colour gradient below."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    shift = index * 4.0
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 128 + 100 * np.sin((xs + shift) / max(width, 1) * 2 * np.pi)
    img[..., 1] = 128 + 100 * np.cos((ys + shift) / max(height, 1) * 2 * np.pi)
    img[..., 2] = 128 + 100 * np.sin((xs + ys - shift) / max(width + height, 1) * 4 * np.pi)
    band = max(height // 4, 8)
    cols = np.array_split(np.arange(width), INDEX_BITS)
    for bit, c in enumerate(cols):
        img[:band, c[0] : c[-1] + 1, :] = 255.0 if (index >> bit) & 1 else 0.0
    return img.clip(0, 255).astype(np.uint8)


def read_index(frame: np.ndarray) -> int:
    """Recover the index written by ``synthetic_frame`` from a decoded (H,W,3) frame."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    band = max(height // 4, 8)
    value = 0
    for bit, c in enumerate(np.array_split(np.arange(width), INDEX_BITS)):
        margin = max(len(c) // 4, 1)
        block = frame[band // 4 : band * 3 // 4, c[0] + margin : c[-1] + 1 - margin]
        if block.mean() > 128:
            value |= 1 << bit
    return value


def make_video(
    codec: str = "h264",
    *,
    width: int = 322,
    height: int = 242,
    frames: int = 48,
    fps: int = 24,
    gop: int = 12,
    bframes: int = 2,
    bitrate: int | None = None,
    pix_fmt: str = "yuv420p",
    container: str | None = None,
    preset: str | None = None,
    rotation: int = 0,
    hflip: bool = False,
) -> bytes:
    """Encode ``frames`` synthetic frames with ``codec`` and return the container bytes.

    ``rotation`` (counter-clockwise degrees) and ``hflip`` write a display matrix, as phones do."""
    import av

    try:
        encoder, default_format = ENCODERS[codec]
    except KeyError:
        raise ValueError(f"codec must be one of {sorted(ENCODERS)}, got {codec!r}") from None
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container or default_format) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if bitrate:
            stream.bit_rate = bitrate
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        opts: dict[str, str] = {}
        if codec == "h264":
            opts = {"g": str(gop), "bf": str(bframes), "preset": preset or "veryfast", "sc_threshold": "0"}
        elif codec == "hevc":
            opts = {
                "preset": preset or "ultrafast",
                "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:log-level=error",
            }
        elif codec == "vp9":
            opts = {"g": str(gop), "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        elif codec == "av1":
            opts = {"g": str(gop), "preset": preset or "10", "crf": "20"}
        stream.options = opts
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height), format="rgb24")
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return buf.getvalue()
