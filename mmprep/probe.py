"""Container and stream facts from encoded bytes, by demuxing only (no decoding).

One pass over the packets gives what sampling and both decoders need: frame count,
fps, per-packet timestamps, keyframes and which packets are safe to skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .bitstream import DisposableScanner
from .isobmff import video_edit_count
from .orientation import display_rotation
from .errors import CorruptMediaError, MediaTooLargeError, NoVideoStreamError
from .source import open_buffer

__all__ = ["StreamInfo", "Probe", "probe"]

# AVColorSpace values (libavutil/pixfmt.h) that select a YUV->RGB matrix.
_MATRIX_BY_AVCOL_SPC = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020", 10: "bt2020"}
_AVCOL_RANGE_JPEG = 2


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about its first video stream."""

    codec: str
    """FFmpeg codec name: ``h264``, ``hevc``, ``vp9``, ``av1``, ..."""
    container: str
    width: int
    height: int
    fps: float
    """Average frame rate; 0.0 when the container gives none."""
    time_base: Fraction
    num_frames: int
    """Presentable frames, counted from the packets (those an edit list cuts away excluded)."""
    pix_fmt: str
    bit_depth: int
    chroma: str
    """``"420"``, ``"422"``, ``"444"`` or ``"gray"``."""
    matrix: str
    """YUV->RGB matrix: ``"bt601"``, ``"bt709"`` or ``"bt2020"`` (untagged streams: bt601, as FFmpeg)."""
    full_range: bool
    rotation: int = 0
    """Display rotation, counter-clockwise degrees (0, 90, 180, -90), from the container (MP4/MOV)."""

    @property
    def duration(self) -> float:
        """Seconds, as vLLM computes it: frames / fps (0.0 without an fps)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class Probe:
    """Stream facts plus one record per packet, in decode order."""

    stream: StreamInfo
    pts: list[int | None]
    keyframe: list[bool]
    disposable: list[bool]
    display_index: list[int]
    """Display-order frame index of each packet's picture; -1 for a packet an edit list cuts away
    (decoded when a shown frame depends on it, never shown)."""
    by_pts: bool
    """True when ``display_index`` comes from unique timestamps of the shown packets; else decode order."""

    @property
    def pts_shared_with_cut(self) -> bool:
        """A cut-away packet has the timestamp of a shown one (FFmpeg's index after several edits): a
        decoder that outputs cut-away pictures cannot tell them apart by timestamp."""
        cut = {p for p, d in zip(self.pts, self.display_index) if d < 0}
        return any(p in cut for p, d in zip(self.pts, self.display_index) if d >= 0)

    def packet_of_frame(self) -> list[int]:
        """Inverse of ``display_index``: the packet ordinal holding each display frame (computed once;
        the planner, both decoders and the timestamps all read it)."""
        inv = self.__dict__.get("_packet_of_frame")
        if inv is None:
            inv = [0] * self.stream.num_frames
            for p, d in enumerate(self.display_index):
                if d >= 0:
                    inv[d] = p
            self.__dict__["_packet_of_frame"] = inv
        return inv

    def timestamp(self, packet: int) -> float:
        """Presentation time of a packet's frame in seconds (frame index / fps without pts)."""
        pts = self.pts[packet]
        if pts is not None:
            return float(pts * self.stream.time_base)
        fps = self.stream.fps
        return self.display_index[packet] / fps if fps > 0 else 0.0


def _pixel_layout(pix_fmt: str) -> tuple[int, str]:
    import av

    fmt = av.VideoFormat(pix_fmt, 64, 64)
    comps = fmt.components
    bits = comps[0].bits
    if len(comps) < 3:
        return bits, "gray"
    w, h = comps[1].width, comps[1].height
    if w == 32 and h == 32:
        return bits, "420"
    if w == 32:
        return bits, "422"
    return bits, "444"


def probe(data: bytes, *, max_pixels: int) -> Probe:
    """Demux ``data`` once; raise a ``MediaError`` subclass naming the cause when it is bad."""
    import av

    try:
        container = av.open(open_buffer(data), mode="r")
    except Exception as e:  # FFmpeg reports hostile input through many error types
        raise CorruptMediaError(f"not a readable media container ({type(e).__name__}: {e})") from e
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise NoVideoStreamError(
                f"container {container.format.name!r} has no video stream (streams: {', '.join(kinds)})"
            )
        vs = container.streams.video[0]
        cc = vs.codec_context
        if cc is None:  # FFmpeg found a video stream but could not open its codec parameters
            raise CorruptMediaError(f"video stream {vs.index}: codec parameters unreadable (damaged header)")
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise CorruptMediaError(f"video stream has no valid dimensions ({width}x{height})")
        if width * height > max_pixels:
            raise MediaTooLargeError(
                f"video is {width}x{height} = {width * height} pixels, over max_pixels={max_pixels}"
            )
        pix_fmt = cc.pix_fmt or "yuv420p"
        try:
            bit_depth, chroma = _pixel_layout(pix_fmt)
        except Exception:
            bit_depth, chroma = 8, "420"
        codec = cc.codec.canonical_name if cc.codec is not None else cc.name
        scanner = DisposableScanner(codec, bytes(cc.extradata) if cc.extradata else None)
        pts: list[int | None] = []
        key: list[bool] = []
        cut: list[bool] = []  # packets the container's edit list excludes from presentation
        try:
            for pkt in container.demux(vs):
                if pkt.size == 0:
                    continue
                if pkt.pos is not None and pkt.pos >= 0 and pkt.pos + pkt.size > len(data):
                    raise CorruptMediaError(
                        f"truncated: packet {len(pts)} ends at byte {pkt.pos + pkt.size}, "
                        f"input has {len(data)}"
                    )
                pts.append(pkt.pts)
                key.append(bool(pkt.is_keyframe))
                cut.append(bool(pkt.is_discard))
                scanner.add(bytes(pkt))
        except CorruptMediaError:
            raise
        except Exception as e:
            raise CorruptMediaError(
                f"damaged or truncated stream after {len(pts)} packets ({type(e).__name__}: {e})"
            ) from e
        if not pts:
            raise CorruptMediaError(f"{codec} stream holds no packets")
        declared = int(vs.frames or 0)
        # Several edits make FFmpeg rebuild the index from the kept spans: fewer packets than the header
        # counts is then the edit list's doing, not truncation (which the byte-extent check above catches).
        if declared > len(pts) and video_edit_count(data) <= 1:
            raise CorruptMediaError(
                f"truncated: container declares {declared} frames, only {len(pts)} packets present"
            )
        rate = vs.average_rate or vs.guessed_rate
        fps = float(rate) if rate else 0.0
        shown = [i for i in range(len(pts)) if not cut[i]]
        if not shown:
            raise CorruptMediaError(f"the edit list leaves none of the {len(pts)} frames presentable")
        shown_pts = [pts[i] for i in shown]
        by_pts = all(p is not None for p in shown_pts) and len(set(shown_pts)) == len(shown_pts)
        display = [-1] * len(pts)
        if by_pts:
            for rank, i in enumerate(sorted(shown, key=lambda i: pts[i])):
                display[i] = rank
        elif len(shown) == len(pts):
            display = list(range(len(pts)))
        else:
            raise CorruptMediaError("an edit list cuts frames from a stream without usable timestamps")
        info = StreamInfo(
            codec=codec,
            container=container.format.name,
            width=width,
            height=height,
            fps=fps,
            time_base=vs.time_base or Fraction(1, 1),
            num_frames=len(shown),
            pix_fmt=pix_fmt,
            bit_depth=bit_depth,
            chroma=chroma,
            matrix=_MATRIX_BY_AVCOL_SPC.get(int(cc.colorspace or 2), "bt601"),
            full_range=int(cc.color_range or 0) == _AVCOL_RANGE_JPEG or pix_fmt.startswith("yuvj"),
            rotation=display_rotation(data, container.format.name),
        )
        return Probe(
            stream=info,
            pts=pts,
            keyframe=key,
            disposable=scanner.flags(len(pts)),
            display_index=display,
            by_pts=by_pts,
        )
    finally:
        container.close()
