"""``decode_video``: bytes in, sampled RGB frames out, on NVDEC when it can, else the CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import memory
from .config import settings
from .decode import decode_cpu, decode_nvdec, nvdec_available
from .device import parse_device
from .errors import TooManyFramesError, UnsupportedCodecError
from .orientation import apply_rotation as orient
from .probe import StreamInfo, probe
from .sampling import plan_decode, sample_indices
from .source import Source, read_source

logger = logging.getLogger("mmprep")

__all__ = ["Video", "decode_video"]

@dataclass(frozen=True)
class Video:
    """Sampled frames of one video and the facts needed to interpret them."""

    frames: torch.Tensor
    """(T, H, W, 3) uint8 RGB, on the device that decoded them."""
    indices: list[int]
    """Display-order index in the whole stream of each returned frame."""
    timestamps: list[float]
    """Presentation time of each returned frame, in seconds."""
    fps: float
    """The stream's average frame rate."""
    duration: float
    """Seconds: total_frames / fps, as vLLM computes it."""
    total_frames: int
    width: int
    """Displayed width (after the display rotation, when applied)."""
    height: int
    """Displayed height (after the display rotation, when applied)."""
    codec: str
    backend: str
    """``"nvdec"`` or ``"cpu"``: which decoder produced the frames."""
    rotation: int = 0
    """Display rotation the container asks for, counter-clockwise degrees as stored (0, 90, 180, -90)."""

    def __post_init__(self) -> None:
        f = self.frames
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != torch.uint8:
            raise ValueError(f"frames must be (T,H,W,3) uint8, got {tuple(f.shape) = }, {f.dtype = }")
        if len(self.indices) != f.shape[0] or len(self.timestamps) != f.shape[0]:
            raise ValueError(
                f"indices/timestamps must have one entry per frame: {f.shape[0] = }, "
                f"{len(self.indices) = }, {len(self.timestamps) = }"
            )

    def __repr__(self) -> str:
        return (
            f"Video(frames={tuple(self.frames.shape)} {self.frames.dtype} on {self.frames.device}, "
            f"indices={self.indices[:4]}{'...' if len(self.indices) > 4 else ''}, fps={self.fps:.3f}, "
            f"duration={self.duration:.3f}, total_frames={self.total_frames}, size={self.width}x{self.height}, "
            f"codec={self.codec!r}, backend={self.backend!r})"
        )

    def vllm_metadata(self) -> dict:
        """The metadata dict vLLM's video loaders return alongside the frames."""
        return {
            "total_num_frames": self.total_frames,
            "fps": self.fps,
            "duration": self.duration,
            "video_backend": f"mmprep-{self.backend}",
            "frames_indices": list(self.indices),
            "do_sample_frames": len(self.indices) == self.total_frames,
        }


def decode_video(
    source: Source,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    indices: Sequence[int] | Callable[[StreamInfo], Sequence[int]] | None = None,
    device: str | torch.device = "auto",
    max_pixels: int | None = None,
    max_frames: int | None = None,
    apply_rotation: bool = True,
) -> Video:
    """Decode the frames of ``source`` that vLLM's uniform sampler would pick.

    ``num_frames`` spreads that many frames evenly over the clip, ``fps`` takes one frame per
    ``1/fps`` seconds; with both the fewer wins, with neither every frame is returned.
    ``indices`` picks display-order frames explicitly instead (any order, repeats allowed), or is
    a function of the probed ``StreamInfo`` returning them (how vLLM's model-specific samplers plug in).
    ``device="auto"`` uses NVDEC when CUDA, PyNvVideoCodec and the stream allow, else PyAV on
    the CPU; ``"cuda"``/``"cuda:N"`` insists on NVDEC; ``"cpu"`` on PyAV. Frames are turned by the
    container's display rotation on their device, as OpenCV shows them (``apply_rotation=False``:
    stored pixels). Bad media raises ``mmprep.MediaError``.
    """
    kind, gpu = parse_device(device)
    cfg = settings()
    max_pixels = cfg.max_pixels if max_pixels is None else max_pixels
    max_frames = cfg.max_frames if max_frames is None else max_frames
    data = read_source(source, max_bytes=cfg.max_bytes)
    info = probe(data, max_pixels=max_pixels)
    st = info.stream
    if indices is None:
        indices = sample_indices(st.num_frames, st.duration, num_frames=num_frames, fps=fps)
    else:
        if num_frames is not None or fps is not None:
            raise ValueError("pass either indices or num_frames/fps, not both")
        if callable(indices):
            indices = indices(st)
        indices = [int(i) for i in indices]
    if len(indices) > max_frames:
        raise TooManyFramesError(
            f"{len(indices)} frames would be returned, over max_frames={max_frames}; pass num_frames or fps"
        )
    plan = plan_decode(info, indices)  # checks the indices (check_indices)
    turn = st.rotation if apply_rotation else 0

    if kind == "cuda" and not nvdec_available():
        raise RuntimeError(
            f"device={device!r} needs CUDA, an NVIDIA driver and PyNvVideoCodec; use device='auto' or 'cpu'"
        )
    frames, backend = None, "cpu"
    if kind == "cuda" or (kind == "auto" and nvdec_available()):
        try:  # decode_nvdec checks NVDEC's support first and raises UnsupportedCodecError
            lease = memory.acquire(len(indices) * st.width * st.height * 3)
            try:
                frames, backend = orient(decode_nvdec(data, info, plan, len(indices), gpu=gpu), turn), "nvdec"
            except BaseException:
                if lease is not None:
                    lease.release()
                raise
            memory.hold_for(frames, lease)
        except UnsupportedCodecError as e:
            if kind != "auto":
                raise
            logger.debug("decode_video: CPU fallback: %s", e)
    if frames is None:
        frames = orient(decode_cpu(data, info, plan, len(indices), threads=cfg.cpu_threads), turn)
    logger.debug(
        "decode_video: %s %dx%d, %d of %d frames, decoded %d packets on %s",
        st.codec, st.width, st.height, len(indices), st.num_frames, len(plan.feed), backend,
    )
    pkt_of = info.packet_of_frame()
    return Video(
        frames=frames,
        indices=indices,
        timestamps=[info.timestamp(pkt_of[i]) for i in indices],
        fps=st.fps,
        duration=st.duration,
        total_frames=st.num_frames,
        width=int(frames.shape[2]),
        height=int(frames.shape[1]),
        codec=st.codec,
        backend=backend,
        rotation=st.rotation,
    )
