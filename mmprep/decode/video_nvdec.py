"""NVDEC video decode, from memory, on a pooled decoder session.

Bytes are demuxed by PyNvVideoCodec's FFmpeg demuxer through a read callback (no temp file).
Only the packets in the decode plan reach the decoder (skipped GOPs, skipped non-reference
frames, nothing after the last sampled frame). A long plan is cut at a keyframe and its second half
decodes on a second session at the same time when one is free (``sampling.split_feed``; on a helper thread, or
with ``MMPREP_NVDEC_SPLIT=interleave`` fed by the same thread a packet at a time). The decoder is
mmprep's binding of the driver's API (``cuvid``: only sampled pictures are mapped, each converted straight
into the RGB result) or PyNvVideoCodec's (``MMPREP_NVDEC_BACKEND=pynvvideocodec``: every decoded picture
comes out as a surface; the sampled ones are converted with the fused kernel, or copied as NV12 and
converted in one batched torch pass).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

import torch

from ..config import settings
from ..device import wait_idle
from ..errors import CorruptMediaError, UnsupportedCodecError
from ..probe import Probe, StreamInfo
from ..sampling import DecodePlan, split_feed
from ..kernels import fused
from .color import coefficients, nv12_to_rgb
from .cuvid import CuvidDecoder, CuvidUnsupported, cuvid_available
from .nvdec_pool import NvdecPool, Session, nvdec_engines

logger = logging.getLogger("mmprep.nvdec")

__all__ = ["nvdec_available", "nvdec_supports", "get_pool", "decode_nvdec"]

# codec -> (min width, min height, max width, max height) for 4:2:0 on Turing and newer.
NVDEC_CAPS = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "vp9": (128, 128, 8192, 8192),
    "av1": (128, 128, 8192, 8192),
}


@functools.lru_cache(maxsize=1)
def _nvc():
    import PyNvVideoCodec as nvc  # raises where no NVIDIA driver exists, so import lazily

    return nvc


@functools.lru_cache(maxsize=1)
def nvdec_available() -> bool:
    """True when CUDA, an NVIDIA driver and PyNvVideoCodec are all usable in this process."""
    if settings().disable_nvdec or not torch.cuda.is_available():
        return False
    try:
        _nvc()
    except Exception as e:  # ImportError, or RuntimeError from a missing driver library
        logger.debug("PyNvVideoCodec unavailable: %s", e)
        return False
    return True


# (gpu, codec, bit depth) that a GPU's NVDEC refused at run time (e.g. AV1 on H100).
_unsupported_here: set[tuple[int, str, int]] = set()


def nvdec_supports(info: StreamInfo, gpu: int | None = None) -> str | None:
    """None when NVDEC can decode this stream, else the reason it cannot."""
    refused = [g for (g, c, b) in _unsupported_here if c == info.codec and b == info.bit_depth]
    if refused and (gpu in refused or (gpu is None and len(refused) >= torch.cuda.device_count())):
        return f"NVDEC of this GPU does not support {info.codec} {info.bit_depth}-bit (refused earlier)"
    caps = NVDEC_CAPS.get(info.codec)
    if caps is None:
        return f"codec {info.codec!r} is not decoded by mmprep's NVDEC path (supported: {sorted(NVDEC_CAPS)})"
    if info.chroma != "420":
        return f"chroma {info.chroma} ({info.pix_fmt}) is not supported by NVDEC output (4:2:0 only)"
    if info.bit_depth not in (8, 10, 12):
        return f"bit depth {info.bit_depth} is not supported by NVDEC"
    if (info.width % 2 or info.height % 2) and not _uses_cuvid():
        # its copy of such a picture faulted on the GPU (illegal address: the CUDA context is lost; H200, VP9
        # 321x241, 2026-11-28) and hands out one chroma row too few
        return (f"PyNvVideoCodec's decoder mishandles odd picture sizes ({info.width}x{info.height}); "
                f"MMPREP_NVDEC_BACKEND=cuvid decodes them")
    min_w, min_h, max_w, max_h = caps
    if not (min_w <= info.width <= max_w and min_h <= info.height <= max_h):
        return (
            f"{info.codec} {info.width}x{info.height} is outside NVDEC limits "
            f"{min_w}x{min_h}..{max_w}x{max_h}"
        )
    return None


def _uses_cuvid() -> bool:
    """Whether new sessions use mmprep's NVDEC binding (the setting, where the driver's library loads)."""
    return settings().nvdec_backend == "cuvid" and cuvid_available()


def _create_decoder(session: Session) -> None:
    nvc = _nvc()
    codec_id = session.key[0]
    with torch.cuda.device(session.gpu):
        session.stream = torch.cuda.Stream(device=session.gpu)
        if _uses_cuvid():
            session.decoder = CuvidDecoder(session.gpu, session.stream, session.max_width, session.max_height,
                                           display_delay=settings().nvdec_display_delay)
            return
        session.decoder = nvc.CreateDecoder(
            gpuid=session.gpu,
            codec=codec_id,
            cudacontext=0,
            cudastream=session.stream.cuda_stream,
            usedevicememory=True,
            maxwidth=session.max_width,
            maxheight=session.max_height,
            outputColorType=nvc.OutputColorType.NATIVE,
        )


_pool: NvdecPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> NvdecPool:
    """The process-wide pool over every GPU (or ``MMPREP_NVDEC_DEVICES``), created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            cfg = settings()
            gpus = list(cfg.nvdec_devices) if cfg.nvdec_devices is not None else list(range(torch.cuda.device_count()))
            size = {
                g: cfg.nvdec_sessions_per_gpu or nvdec_engines(torch.cuda.get_device_name(g)) for g in gpus
            }
            _pool = NvdecPool(gpus, size, _create_decoder)
            logger.debug("NVDEC pool: %s", size)
        return _pool


class BytesReader:
    """Read callback for PyNvVideoCodec's demuxer: copies the next chunk into its buffer."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.offset = 0

    def __call__(self, buf) -> int:
        n = min(len(buf), len(self.view) - self.offset)
        if n > 0:
            buf[:n] = self.view[self.offset : self.offset + n]
            self.offset += n
        return n


class _DemuxMismatch(RuntimeError):
    """PyNvVideoCodec's demuxer and the PyAV probe disagree on the packet sequence (e.g. a damaged file):
    NVDEC cannot be fed by the plan, so ``decode_nvdec`` reports the stream as one for the CPU decoder."""


class _StaleSurface(RuntimeError):
    """A reused session returned surfaces of its previous stream's size (seen on a resolution change)."""


# Whether a session may be reused for a stream of another size. Cleared, for the life of the
# process, the first time a reused session hands back a surface of the wrong size.
_reuse_across_sizes = True


def _frame_tensor(frame) -> torch.Tensor:
    """The decoded surface (both planes) as one tensor, zero-copy through DLPack."""
    return torch.from_dlpack(frame)


def _surface(src: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Check a decoded NV12 (uint8) / P016 (16-bit) surface against the stream's size and return it
    as (H + ceil(H/2), W) with unit column stride (PyNvVideoCodec 2.0.4 exports P016 with a
    column stride of 2 elements; the data itself is packed)."""
    rows = height + (height + 1) // 2
    cols = 2 * ((width + 1) // 2)  # odd widths: the last chroma pair lies one column past the crop
    if src.ndim == 2 and src.shape[0] == rows and src.shape[1] == width and src.element_size() in (1, 2):
        if src.stride(1) == 1 and src.shape[1] >= cols:
            return src
        if src.stride(0) >= cols:
            return src.as_strided((rows, cols), (src.stride(0), 1))
    raise _StaleSurface(f"surface {tuple(src.shape)} {src.dtype} does not match a {width}x{height} stream")


def _to_nv12_8bit(surface: torch.Tensor) -> torch.Tensor:
    """NV12 as is; P016 reduced to its 8 most significant bits (torch path only)."""
    if surface.dtype == torch.uint8:
        return surface
    return ((surface.view(torch.int16) >> 8) & 0xFF).to(torch.uint8)


def decode_nvdec(data: bytes, probe: Probe, plan: DecodePlan, count: int, *, gpu: int | None = None) -> torch.Tensor:
    """Decode the planned packets on NVDEC; return (count,H,W,3) uint8 on the session's GPU."""
    global _reuse_across_sizes
    reason = nvdec_supports(probe.stream, gpu)
    if not reason and probe.pts_shared_with_cut:
        reason = "several edits leave cut-away pictures with the timestamps of shown ones (NVDEC outputs both)"
    if reason:
        raise UnsupportedCodecError(reason)
    try:
        return _decode(data, probe, plan, count, gpu, exact=not _reuse_across_sizes)
    except _DemuxMismatch as e:  # seen on damaged files (GPU fuzz, 2026-11-28): the CPU decoder follows the probe
        raise UnsupportedCodecError(f"NVDEC's demuxer reads this {probe.stream.codec} stream differently from "
                                    f"its container index ({e}); decode it on the CPU") from e
    except _StaleSurface as e:
        if not _reuse_across_sizes:
            raise CorruptMediaError(f"NVDEC {probe.stream.codec}: {e}") from e
        logger.debug("NVDEC session reuse across sizes disabled: %s", e)
        _reuse_across_sizes = False
        return _decode(data, probe, plan, count, gpu, exact=True)


def _decode(data: bytes, probe: Probe, plan: DecodePlan, count: int, gpu: int | None, exact: bool) -> torch.Tensor:
    nvc = _nvc()
    info = probe.stream
    demuxer, codec_id = _demux(nvc, data)
    key = (codec_id, info.bit_depth, info.chroma)
    rows = info.height + (info.height + 1) // 2
    pool = get_pool()
    with pool.session(key, info.width, info.height, gpu=gpu, exact=exact) as session:
        device = torch.device("cuda", session.gpu)
        caller_stream = torch.cuda.current_stream(device)
        kern = fused()
        if kern is not None:  # convert each wanted surface straight into the RGB result
            dst = torch.empty((count, info.height, info.width, 3), dtype=torch.uint8, device=device)
        else:  # copy NV12 out, convert the batch at the end in torch
            dst = torch.empty((count, rows, 2 * ((info.width + 1) // 2)), dtype=torch.uint8, device=device)
        try:
            mode = settings().nvdec_split
            halves = split_feed(probe, plan) if mode != "off" else None
            with pool.session(key, info.width, info.height, gpu=session.gpu, exact=exact, wait=False) if halves \
                    else contextlib.nullcontext() as helper:
                if helper is None:  # no second decoder free (or nothing worth cutting): one pass
                    filled = _drive(session, _part(data, demuxer, probe, plan, plan.feed, session, kern, dst))
                elif mode == "interleave":  # both halves on this thread, a packet to each session in turn
                    filled = _drive(session, _part(data, demuxer, probe, plan, halves[0], session, kern, dst),
                                    _part(data, None, probe, plan, halves[1], helper, kern, dst))
                else:  # the second half on a helper thread, at the same time, on the same GPU
                    with ThreadPoolExecutor(1, thread_name_prefix="mmprep-nvdec") as ex:
                        later = ex.submit(_drive, helper, _part(data, None, probe, plan, halves[1], helper, kern, dst))
                        try:
                            filled = _drive(session, _part(data, demuxer, probe, plan, halves[0], session, kern, dst))
                        finally:
                            filled_later = later.result()
                        filled += filled_later
                if helper is not None:
                    caller_stream.wait_stream(helper.stream)
            if filled != count:
                raise CorruptMediaError(f"NVDEC {info.codec} decoder produced {filled} of {count} requested frames")
            # The result was allocated on the caller's stream; make that stream wait for our work.
            caller_stream.wait_stream(session.stream)
            if kern is not None:
                return dst
            with torch.cuda.device(session.gpu), torch.cuda.stream(caller_stream):
                return nv12_to_rgb(dst, info.height, info.width, matrix=info.matrix, full_range=info.full_range)
        finally:
            dst = None  # free the buffer now, also when an error's traceback outlives this call


def _demux(nvc, data: bytes):
    """A PyNvVideoCodec demuxer reading ``data`` and its codec id; ``CorruptMediaError`` when it rejects the stream."""
    try:
        demuxer = nvc.CreateDemuxer(BytesReader(data))
        return demuxer, demuxer.GetNvCodecId()
    except Exception as e:
        raise CorruptMediaError(f"NVDEC demuxer rejected the stream ({type(e).__name__}: {e})") from e


def _drive(session: Session, *parts: Generator[None, None, int]) -> int:
    """Run the steps of ``parts`` (``_part`` generators on sessions of ``session``'s GPU) in turn on this thread until
    all have finished; return the result slots they filled. On an error the others are closed (their parsers
    destroyed, their streams waited for) before it propagates."""
    filled = 0
    live = list(parts)
    with session.decoder.current() if isinstance(session.decoder, CuvidDecoder) else contextlib.nullcontext():
        try:
            while live:
                for part in tuple(live):
                    try:
                        next(part)
                    except StopIteration as done:
                        filled += done.value
                        live.remove(part)
        finally:
            for part in parts:  # the unfinished ones: their parsers destroyed, their streams waited for
                try:
                    part.close()
                except Exception as e:  # noqa: BLE001 - the error that stopped the others is the one to report
                    logger.debug("NVDEC part cleanup failed: %s", e)
    return filled


def _part(data: bytes, demuxer, probe: Probe, plan: DecodePlan, feed: list[int], session: Session, kern,
          dst: torch.Tensor) -> Generator[None, None, int]:
    """Feed packets ``feed`` (a run of ``plan.feed`` that starts at a keyframe) of ``data`` to ``session``, read
    by ``demuxer`` (a fresh one on ``data`` when None), one packet per step (``_drive`` runs the steps); write the
    wanted frames into ``dst`` (RGB with the fused kernel, else NV12); return how many slots it filled."""
    nvc = _nvc()
    info = probe.stream
    if demuxer is None:
        demuxer, _ = _demux(nvc, data)
    wanted = set(feed)
    first, last = (feed[0], feed[-1]) if feed else (0, -1)
    packet_of_frame = probe.packet_of_frame()
    coeffs = list(coefficients(info.matrix))
    filled = 0
    pts_to_ordinal: dict[int, int] = {}  # decoders hand pictures out with the pts of their packet

    def put(frame: torch.Tensor, positions: list[int]) -> None:
        """Write one sampled picture (a decoded surface) into its result slots; the decoder calls it with the
        session's device and stream current."""
        nonlocal filled
        surface = _surface(frame, info.height, info.width)
        if kern is not None:
            head = dst[positions[0]]
            kern.nv12_to_rgb(surface, info.height, info.width, head, coeffs, info.full_range)
            for pos in positions[1:]:
                dst[pos].copy_(head)
        else:
            surface = _to_nv12_8bit(surface)
            for pos in positions:
                dst[pos].copy_(surface)
        filled += len(positions)

    def slots(pts: int, shown: int) -> list[int] | None:
        """Result slots of the ``shown``-th picture out, whose pts is ``pts`` (where timestamps tell)."""
        if plan.sequential:
            ordinal = packet_of_frame[shown] if shown < info.num_frames else None
        else:
            ordinal = pts_to_ordinal.get(pts)
        return (plan.slots.get(ordinal) or None) if ordinal is not None else None

    def packets():
        """The planned packets of this run, in decode order, checked against the probe (and their pts noted)."""
        ordinal = -1
        for packet in demuxer:
            ordinal += 1
            if ordinal > last:
                break
            if ordinal < first or ordinal not in wanted:
                continue
            if bool(packet.key) != probe.keyframe[ordinal]:
                raise _DemuxMismatch(
                    f"demuxers disagree at packet {ordinal}: key={bool(packet.key)} vs {probe.keyframe[ordinal]}"
                )
            pts_to_ordinal[packet.pts] = ordinal
            yield packet

    try:
        try:
            if isinstance(session.decoder, CuvidDecoder):  # NVDEC's parser reorders timestamps: send pts
                yield from session.decoder.steps(info.codec, ((int(p.bsl_data), int(p.bsl), p.pts) for p in packets()),
                                                 slots, put)
            else:
                yield from _pynvvideocodec_steps(nvc, session, info, packets(), slots, put)
        except (CorruptMediaError, _DemuxMismatch, _StaleSurface):
            raise
        except (nvc.PyNvVCExceptionUnsupported, CuvidUnsupported) as e:
            _unsupported_here.add((session.gpu, info.codec, info.bit_depth))
            raise UnsupportedCodecError(
                f"NVDEC on GPU {session.gpu} cannot decode {info.codec} {info.bit_depth}-bit "
                f"{info.width}x{info.height}: {' '.join(str(e).split())}"
            ) from e
        except Exception as e:
            raise CorruptMediaError(f"NVDEC {info.codec} decode failed ({type(e).__name__}: {e})") from e
        return filled
    finally:
        wait_idle(session.stream)  # work queued into our buffers must land before their memory is reused


def _pynvvideocodec_steps(nvc, session: Session, info, packets, slots, put) -> Generator[None, None, None]:
    """Decode ``packets`` on a PyNvVideoCodec decoder, one packet per step: every picture comes out as a surface;
    ``put`` the ones that have ``slots``."""
    if session.width and (session.width, session.height) != (info.width, info.height):
        with torch.cuda.device(session.gpu):
            session.decoder.setReconfigParams(info.width, info.height)
    shown = 0

    def take(packet) -> None:
        nonlocal shown
        with torch.cuda.device(session.gpu), torch.cuda.stream(session.stream):
            for frame in session.decoder.Decode(packet):
                positions = slots(frame.getPTS(), shown)
                shown += 1
                if positions:
                    put(_frame_tensor(frame), positions)

    for packet in packets:
        take(packet)
        yield
    take(nvc.PacketData())  # end of stream: flush the reorder queue
    yield
