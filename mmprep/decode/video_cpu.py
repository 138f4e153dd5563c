"""CPU video decode with PyAV (FFmpeg), following the same decode plan as NVDEC."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CorruptMediaError
from ..probe import Probe
from ..sampling import DecodePlan
from ..source import open_buffer

__all__ = ["decode_cpu"]

_SWS_COLORSPACE = {"bt601": "ITU601", "bt709": "ITU709", "bt2020": "BT2020"}


def _to_rgb(frame, probe: Probe, reformatter, threads: int) -> np.ndarray:
    info = probe.stream
    rgb = reformatter.reformat(
        frame,
        format="rgb24",
        src_colorspace=_SWS_COLORSPACE[info.matrix],
        src_color_range="JPEG" if info.full_range else "MPEG",
        threads=threads,
    )
    return rgb.to_ndarray()


def decode_cpu(data: bytes, probe: Probe, plan: DecodePlan, count: int, *, threads: int = 0) -> torch.Tensor:
    """Decode the planned packets; return the wanted frames as a (count,H,W,3) uint8 CPU tensor."""
    import av
    from av.video.reformatter import VideoReformatter

    info = probe.stream
    reformatter = VideoReformatter()  # keeps its swscale context across frames
    out = np.empty((count, info.height, info.width, 3), dtype=np.uint8)
    filled = 0
    if not plan.feed:
        return torch.from_numpy(out)
    feed = set(plan.feed)
    last = plan.feed[-1]
    # Shown packets only: FFmpeg never outputs the pictures an edit list cuts away (they may share a pts).
    ordinal_of_pts = ({p: i for i, p in enumerate(probe.pts) if probe.display_index[i] >= 0}
                      if not plan.sequential else {})
    packet_of_frame = probe.packet_of_frame()
    produced = 0  # frames out of the decoder so far (sequential mode's display index)

    def take(frame) -> None:
        nonlocal filled, produced
        if plan.sequential:
            ordinal = packet_of_frame[produced] if produced < info.num_frames else None
        else:
            ordinal = ordinal_of_pts.get(frame.pts)
        produced += 1
        positions = plan.slots.get(ordinal) if ordinal is not None else None
        if not positions:
            return
        if frame.width != info.width or frame.height != info.height:
            raise CorruptMediaError(
                f"frame size changed mid-stream: {frame.width}x{frame.height}, "
                f"stream says {info.width}x{info.height}"
            )
        rgb = _to_rgb(frame, probe, reformatter, threads)
        for pos in positions:
            out[pos] = rgb
        filled += len(positions)

    try:
        with av.open(open_buffer(data), mode="r") as container:
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            if threads:
                vs.thread_count = threads
            ctx = vs.codec_context
            ordinal = -1
            for pkt in container.demux(vs):
                if pkt.size == 0:
                    continue
                ordinal += 1
                if ordinal in feed:
                    for frame in ctx.decode(pkt):
                        take(frame)
                if ordinal >= last:
                    break
            for frame in ctx.decode(None):
                take(frame)
    except CorruptMediaError:
        raise
    except Exception as e:
        raise CorruptMediaError(f"{info.codec} decode failed ({type(e).__name__}: {e})") from e
    if filled != count:
        raise CorruptMediaError(f"{info.codec} decoder produced {filled} of {count} requested frames")
    return torch.from_numpy(out)
