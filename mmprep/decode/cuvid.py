"""NVDEC through the driver's own video API (``libnvcuvid``, ctypes): decode every planned picture, map only the
sampled ones.

PyNvVideoCodec maps and copies every picture it decodes (a post-processing kernel and two copies each, ~220
operations per 20-frame request of the serving workload). On a GPU shared with a model engine every such
operation makes the GPU switch contexts: the engine lost 11 % of its throughput to decoding at 6.5 videos/s,
while the media's own kernels took 1 % of the GPU (``bench/gpu_sharing.py``, H200, 2026-11-28). Here the
parser calls back for each picture; pictures nobody sampled are decoded (others need them) but never mapped,
and a sampled one is converted straight from its mapped surface. Packets still come from PyNvVideoCodec's
demuxer (Annex B, parameter sets in band).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any
from ctypes import POINTER, Structure, byref, c_int, c_longlong, c_short, c_ubyte, c_uint, c_ulong, c_ulonglong, \
    c_ushort, c_void_p

import torch

__all__ = ["CODECS", "cuvid_available", "CuvidDecoder", "CuvidError", "CuvidUnsupported"]

CODECS = {"h264": 4, "hevc": 8, "vp9": 10, "av1": 11}
"""mmprep codec name -> cudaVideoCodec."""
_CHROMA_420 = 1
_PKT_ENDOFSTREAM, _PKT_TIMESTAMP = 0x01, 0x02
_CREATE_PREFER_CUVID = 0x04
_SURFACE_NV12, _SURFACE_P016 = 0, 1
_DEINTERLACE_WEAVE, _DEINTERLACE_ADAPTIVE = 0, 2
_CUDA_ERROR_NOT_SUPPORTED = 801


class CuvidError(RuntimeError):
    """A call into NVDEC failed; carries the CUresult."""


class CuvidUnsupported(CuvidError):
    """This GPU's NVDEC cannot decode the stream (codec, bit depth, chroma or size)."""


class _Rect16(Structure):
    _fields_ = [("left", c_short), ("top", c_short), ("right", c_short), ("bottom", c_short)]


class _Rect32(Structure):
    _fields_ = [("left", c_int), ("top", c_int), ("right", c_int), ("bottom", c_int)]


class _Format(Structure):  # CUVIDEOFORMAT
    _fields_ = [("codec", c_int), ("fr_num", c_uint), ("fr_den", c_uint), ("progressive_sequence", c_ubyte),
                ("bit_depth_luma_minus8", c_ubyte), ("bit_depth_chroma_minus8", c_ubyte),
                ("min_num_decode_surfaces", c_ubyte), ("coded_width", c_uint), ("coded_height", c_uint),
                ("display_area", _Rect32), ("chroma_format", c_int), ("bitrate", c_uint), ("dar_x", c_int),
                ("dar_y", c_int), ("video_signal", c_ubyte * 4), ("seqhdr_data_length", c_uint)]


class _Caps(Structure):  # CUVIDDECODECAPS
    _fields_ = [("eCodecType", c_int), ("eChromaFormat", c_int), ("nBitDepthMinus8", c_uint), ("reserved1", c_uint * 3),
                ("bIsSupported", c_ubyte), ("nNumNVDECs", c_ubyte), ("nOutputFormatMask", c_ushort),
                ("nMaxWidth", c_uint), ("nMaxHeight", c_uint), ("nMaxMBCount", c_uint), ("nMinWidth", c_ushort),
                ("nMinHeight", c_ushort), ("bIsHistogramSupported", c_ubyte), ("nCounterBitDepth", c_ubyte),
                ("nMaxHistogramBins", c_ushort), ("reserved3", c_uint * 10)]


class _CreateInfo(Structure):  # CUVIDDECODECREATEINFO
    _fields_ = [("ulWidth", c_ulong), ("ulHeight", c_ulong), ("ulNumDecodeSurfaces", c_ulong), ("CodecType", c_int),
                ("ChromaFormat", c_int), ("ulCreationFlags", c_ulong), ("bitDepthMinus8", c_ulong),
                ("ulIntraDecodeOnly", c_ulong), ("ulMaxWidth", c_ulong), ("ulMaxHeight", c_ulong),
                ("Reserved1", c_ulong), ("display_area", _Rect16), ("OutputFormat", c_int), ("DeinterlaceMode", c_int),
                ("ulTargetWidth", c_ulong), ("ulTargetHeight", c_ulong), ("ulNumOutputSurfaces", c_ulong),
                ("vidLock", c_void_p), ("target_rect", _Rect16), ("enableHistogram", c_ulong), ("Reserved2", c_ulong * 4)]


class _Reconfigure(Structure):  # CUVIDRECONFIGUREDECODERINFO
    _fields_ = [("ulWidth", c_uint), ("ulHeight", c_uint), ("ulTargetWidth", c_uint), ("ulTargetHeight", c_uint),
                ("ulNumDecodeSurfaces", c_uint), ("reserved1", c_uint * 12), ("display_area", _Rect16),
                ("target_rect", _Rect16), ("reserved2", c_uint * 11)]


class _ProcParams(Structure):  # CUVIDPROCPARAMS
    _fields_ = [("progressive_frame", c_int), ("second_field", c_int), ("top_field_first", c_int),
                ("unpaired_field", c_int), ("reserved_flags", c_uint), ("reserved_zero", c_uint),
                ("raw_input_dptr", c_ulonglong), ("raw_input_pitch", c_uint), ("raw_input_format", c_uint),
                ("raw_output_dptr", c_ulonglong), ("raw_output_pitch", c_uint), ("Reserved1", c_uint),
                ("output_stream", c_void_p), ("Reserved", c_uint * 46), ("histogram_dptr", c_void_p),
                ("Reserved2", c_void_p * 1)]


class _DispInfo(Structure):  # CUVIDPARSERDISPINFO
    _fields_ = [("picture_index", c_int), ("progressive_frame", c_int), ("top_field_first", c_int),
                ("repeat_first_field", c_int), ("timestamp", c_longlong)]


class _Packet(Structure):  # CUVIDSOURCEDATAPACKET
    _fields_ = [("flags", c_ulong), ("payload_size", c_ulong), ("payload", c_void_p), ("timestamp", c_longlong)]


_SEQ = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(_Format))
_PIC = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p)
_DISP = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(_DispInfo))


class _ParserParams(Structure):  # CUVIDPARSERPARAMS
    _fields_ = [("CodecType", c_int), ("ulMaxNumDecodeSurfaces", c_uint), ("ulClockRate", c_uint),
                ("ulErrorThreshold", c_uint), ("ulMaxDisplayDelay", c_uint), ("flags", c_uint),
                ("uReserved1", c_uint * 4), ("pUserData", c_void_p), ("pfnSequenceCallback", _SEQ),
                ("pfnDecodePicture", _PIC), ("pfnDisplayPicture", _DISP), ("pfnGetOperatingPoint", c_void_p),
                ("pfnGetSEIMsg", c_void_p), ("pvReserved2", c_void_p * 5), ("pExtVideoInfo", c_void_p)]


class _Api:
    """The driver entry points, loaded once per process."""

    def __init__(self) -> None:
        nv = ctypes.CDLL("libnvcuvid.so.1")
        cu = ctypes.CDLL("libcuda.so.1")
        for lib, name, args in (
            (nv, "cuvidGetDecoderCaps", [POINTER(_Caps)]),
            (nv, "cuvidCreateDecoder", [POINTER(c_void_p), POINTER(_CreateInfo)]),
            (nv, "cuvidReconfigureDecoder", [c_void_p, POINTER(_Reconfigure)]),
            (nv, "cuvidDestroyDecoder", [c_void_p]),
            (nv, "cuvidDecodePicture", [c_void_p, c_void_p]),
            (nv, "cuvidMapVideoFrame64", [c_void_p, c_int, POINTER(c_ulonglong), POINTER(c_uint), POINTER(_ProcParams)]),
            (nv, "cuvidUnmapVideoFrame64", [c_void_p, c_ulonglong]),
            (nv, "cuvidCreateVideoParser", [POINTER(c_void_p), POINTER(_ParserParams)]),
            (nv, "cuvidParseVideoData", [c_void_p, POINTER(_Packet)]),
            (nv, "cuvidDestroyVideoParser", [c_void_p]),
            (cu, "cuDeviceGet", [POINTER(c_int), c_int]),
            (cu, "cuDevicePrimaryCtxRetain", [POINTER(c_void_p), c_int]),
            (cu, "cuCtxPushCurrent_v2", [c_void_p]),
            (cu, "cuCtxPopCurrent_v2", [POINTER(c_void_p)]),
            (cu, "cuStreamSynchronize", [c_void_p]),
        ):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, c_int
            setattr(self, name, fn)
        self._contexts: dict[int, c_void_p] = {}
        self._lock = threading.Lock()

    def check(self, rc: int, what: str) -> None:
        if rc == _CUDA_ERROR_NOT_SUPPORTED:
            raise CuvidUnsupported(f"{what}: not supported by this GPU's NVDEC (CUresult {rc})")
        if rc:
            raise CuvidError(f"{what} failed (CUresult {rc})")

    def context(self, gpu: int) -> c_void_p:
        """The primary context of ``gpu`` (torch's), retained once."""
        with self._lock:
            if gpu not in self._contexts:
                torch.cuda.init()
                dev, ctx = c_int(), c_void_p()
                self.check(self.cuDeviceGet(byref(dev), gpu), "cuDeviceGet")
                self.check(self.cuDevicePrimaryCtxRetain(byref(ctx), dev.value), "cuDevicePrimaryCtxRetain")
                self._contexts[gpu] = ctx
            return self._contexts[gpu]


@functools.lru_cache(maxsize=1)
def _api() -> _Api | None:
    try:
        return _Api()
    except (OSError, AttributeError):  # no NVIDIA driver, or one without the video API
        return None


def cuvid_available() -> bool:
    """True when the driver's video decode library loads in this process."""
    return _api() is not None


class _Current:
    """Push ``gpu``'s primary context on this thread for the block (NVDEC calls use the current context)."""

    def __init__(self, api: _Api, gpu: int) -> None:
        self.api, self.ctx = api, api.context(gpu)

    def __enter__(self) -> None:
        self.api.check(self.api.cuCtxPushCurrent_v2(self.ctx), "cuCtxPushCurrent")

    def __exit__(self, *exc) -> None:
        self.api.cuCtxPopCurrent_v2(byref(c_void_p()))


class _Surface:
    """A mapped NVDEC picture as ``__cuda_array_interface__`` (rows of ``pitch`` bytes), for ``torch.as_tensor``."""

    def __init__(self, ptr: int, rows: int, cols: int, pitch: int, itemsize: int) -> None:
        self.__cuda_array_interface__ = {"shape": (rows, cols), "strides": (pitch, itemsize),
                                         "typestr": "|u1" if itemsize == 1 else "<u2", "data": (ptr, False),
                                         "version": 3, "stream": None}


class CuvidDecoder:
    """One NVDEC decoder on one GPU, kept across streams of one codec / bit depth / chroma (a pool session).
    The hardware decoder is created at the first stream's sequence header, reconfigured in place for another
    size within ``max_width`` x ``max_height``, and recreated for anything else. ``display_delay``: pictures the
    parser decodes ahead of the one shown (mapped), so NVDEC keeps working while a sampled picture is converted."""

    def __init__(self, gpu: int, stream: torch.cuda.Stream, max_width: int, max_height: int,
                 display_delay: int = 2) -> None:
        if not 0 <= display_delay <= 16:
            raise ValueError(f"display_delay must be in 0..16, got {display_delay}")
        api = _api()
        if api is None:
            raise CuvidError("libnvcuvid could not be loaded")
        self.api, self.gpu, self.stream = api, gpu, stream
        self.max_width, self.max_height, self.display_delay = max_width, max_height, display_delay
        self.handle = c_void_p()
        self.made: tuple | None = None  # (codec, bit depth - 8, chroma, coded w, coded h, display area) of the decoder
        self.surfaces = 0

    def close(self) -> None:
        if self.handle:
            with _Current(self.api, self.gpu):
                self.api.cuvidDestroyDecoder(self.handle)
            self.handle = c_void_p()
            self.made = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver is unloading too
            pass

    def _caps(self, fmt: _Format) -> None:
        caps = _Caps(eCodecType=fmt.codec, eChromaFormat=fmt.chroma_format, nBitDepthMinus8=fmt.bit_depth_luma_minus8)
        self.api.check(self.api.cuvidGetDecoderCaps(byref(caps)), "cuvidGetDecoderCaps")
        w, h = fmt.coded_width, fmt.coded_height
        if not caps.bIsSupported:
            raise CuvidUnsupported(f"codec {fmt.codec} chroma {fmt.chroma_format} "
                                   f"{fmt.bit_depth_luma_minus8 + 8}-bit is not supported by this GPU's NVDEC")
        if not (caps.nMinWidth <= w <= caps.nMaxWidth and caps.nMinHeight <= h <= caps.nMaxHeight) or \
                (w // 16) * (h // 16) > caps.nMaxMBCount:
            raise CuvidUnsupported(f"{w}x{h} is outside this GPU's NVDEC limits {caps.nMinWidth}x{caps.nMinHeight}.."
                                   f"{caps.nMaxWidth}x{caps.nMaxHeight}")

    def _configure(self, fmt: _Format) -> int:
        """Have a decoder ready for ``fmt`` (reuse, reconfigure or create); return its surface count."""
        area = fmt.display_area
        disp = (area.left, area.top, area.right, area.bottom)
        want = (fmt.codec, fmt.bit_depth_luma_minus8, fmt.chroma_format)
        w, h = fmt.coded_width, fmt.coded_height
        # the decoded pictures the parser holds back for display need surfaces of their own
        surfaces = max(int(fmt.min_num_decode_surfaces), 1) + self.display_delay + 2
        if self.made is not None and self.made[:3] == want and surfaces <= self.surfaces \
                and w <= self.max_width and h <= self.max_height:
            if self.made[3:] != (w, h, disp):
                r = _Reconfigure(ulWidth=w, ulHeight=h, ulTargetWidth=area.right - area.left,
                                 ulTargetHeight=area.bottom - area.top, ulNumDecodeSurfaces=self.surfaces,
                                 display_area=_Rect16(*disp))
                self.api.check(self.api.cuvidReconfigureDecoder(self.handle, byref(r)), "cuvidReconfigureDecoder")
                self.made = (*want, w, h, disp)
            return self.surfaces
        self.close()
        self._caps(fmt)
        self.max_width, self.max_height = max(self.max_width, w), max(self.max_height, h)
        info = _CreateInfo(
            ulWidth=w, ulHeight=h, ulNumDecodeSurfaces=surfaces, CodecType=fmt.codec, ChromaFormat=fmt.chroma_format,
            ulCreationFlags=_CREATE_PREFER_CUVID, bitDepthMinus8=fmt.bit_depth_luma_minus8,
            ulMaxWidth=self.max_width, ulMaxHeight=self.max_height, display_area=_Rect16(*disp),
            OutputFormat=_SURFACE_NV12 if fmt.bit_depth_luma_minus8 == 0 else _SURFACE_P016,
            DeinterlaceMode=_DEINTERLACE_WEAVE if fmt.progressive_sequence else _DEINTERLACE_ADAPTIVE,
            ulTargetWidth=area.right - area.left, ulTargetHeight=area.bottom - area.top, ulNumOutputSurfaces=2,
        )
        handle = c_void_p()
        self.api.check(self.api.cuvidCreateDecoder(byref(handle), byref(info)), "cuvidCreateDecoder")
        self.handle, self.surfaces, self.made = handle, surfaces, (*want, w, h, disp)
        return surfaces

    def current(self) -> "_Current":
        """A context manager making this decoder's GPU context current on the calling thread (what ``steps``
        needs around each step)."""
        return _Current(self.api, self.gpu)

    def steps(self, codec: str, packets: Iterable[tuple[int, int, int]], pick: Callable[[int, int], Any],
              use: Callable[[torch.Tensor, Any], None]) -> Generator[None, None, int]:
        """Parse and decode ``packets`` — (address, size, pts) of Annex-B / raw frame data that stays alive
        while it is parsed — then flush, one packet per step: a generator that yields after each packet (and after
        the flush) and returns the pictures shown, so that one thread can drive several decoders of one GPU in
        turn. Run each step inside ``current()`` (one context push around a whole loop, not one per packet);
        closing the generator early destroys the parser. Each picture shown calls ``pick(its pts, pictures shown
        before it)`` (the parser hands out the timestamps it was given in display order, so they must be
        presentation times); where that returns something, ``use(surface, it)`` gets the mapped picture,
        (H + ceil(H/2), W) NV12 uint8 or P016 uint16 with rows ``pitch`` apart, valid until ``use`` returns
        (``use`` runs with ``self.stream`` current; the work it queued there is waited for)."""
        api = self.api
        errors: list[BaseException] = []
        shown = [0]

        def on_sequence(_user, fmt_p) -> int:
            try:
                fmt = fmt_p.contents
                if fmt.chroma_format != _CHROMA_420:
                    raise CuvidUnsupported(f"chroma format {fmt.chroma_format} (only 4:2:0 is decoded on NVDEC here)")
                return self._configure(fmt)
            except BaseException as e:
                errors.append(e)
                return 0

        def on_decode(_user, pic) -> int:
            rc = api.cuvidDecodePicture(self.handle, pic)
            if rc:
                errors.append(CuvidError(f"cuvidDecodePicture failed (CUresult {rc})"))
                return 0
            return 1

        def on_display(_user, disp_p) -> int:
            try:
                if not disp_p:
                    return 1
                d = disp_p.contents
                n = shown[0]
                shown[0] += 1
                picked = pick(int(d.timestamp), n)
                if picked is None:
                    return 1
                vpp = _ProcParams(progressive_frame=d.progressive_frame, second_field=d.repeat_first_field + 1,
                                  top_field_first=d.top_field_first, unpaired_field=int(d.repeat_first_field < 0),
                                  output_stream=self.stream.cuda_stream)
                ptr, pitch = c_ulonglong(), c_uint()
                api.check(api.cuvidMapVideoFrame64(self.handle, d.picture_index, byref(ptr), byref(pitch), byref(vpp)),
                          "cuvidMapVideoFrame")
                try:
                    left, top, right, bottom = self.made[5]  # the display area the decoder outputs
                    h, w = bottom - top, right - left
                    item = 1 if self.made[1] == 0 else 2
                    chroma_row = h + h % 2  # the chroma plane starts at an even row
                    with torch.cuda.device(self.gpu), torch.cuda.stream(self.stream):  # the copy below, and ``use``
                        # odd width: the last chroma pair is one column wider than the picture
                        view = torch.as_tensor(_Surface(ptr.value, chroma_row + (h + 1) // 2, w + w % 2, pitch.value,
                                                        item), device=f"cuda:{self.gpu}")
                        if h % 2:  # odd height (a cropped stream): drop the padding row between the planes (a copy)
                            view = torch.cat([view[:h], view[chroma_row:]])
                        use(view[:, :w], picked)
                finally:  # what ``use`` queued reads the surface: let it finish before the surface is reused
                    synced = api.cuStreamSynchronize(c_void_p(self.stream.cuda_stream))
                    api.cuvidUnmapVideoFrame64(self.handle, ptr.value)
                api.check(synced, "cuStreamSynchronize")
                return 1
            except BaseException as e:
                errors.append(e)
                return 0

        seq, pic, disp = _SEQ(on_sequence), _PIC(on_decode), _DISP(on_display)
        params = _ParserParams(CodecType=CODECS[codec], ulMaxNumDecodeSurfaces=1, ulErrorThreshold=0,
                               ulMaxDisplayDelay=self.display_delay, pfnSequenceCallback=seq, pfnDecodePicture=pic,
                               pfnDisplayPicture=disp)
        parser = c_void_p()
        with _Current(api, self.gpu):
            api.check(api.cuvidCreateVideoParser(byref(parser), byref(params)), "cuvidCreateVideoParser")

        def parse(pkt: _Packet) -> None:
            rc = api.cuvidParseVideoData(parser, byref(pkt))
            if errors:  # a callback's exception says more than the parser's code
                raise errors[0]
            api.check(rc, "cuvidParseVideoData")

        try:
            for addr, size, pts in packets:
                parse(_Packet(flags=_PKT_TIMESTAMP, payload_size=size, payload=addr, timestamp=pts))
                yield
            parse(_Packet(flags=_PKT_ENDOFSTREAM))
            yield
        finally:
            with _Current(api, self.gpu):
                api.cuvidDestroyVideoParser(parser)
        return shown[0]
