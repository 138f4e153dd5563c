"""Decoders: NVDEC (PyNvVideoCodec) and CPU (PyAV), both following one decode plan."""

from .video_cpu import decode_cpu
from .video_nvdec import decode_nvdec, get_pool, nvdec_available, nvdec_supports

__all__ = ["decode_cpu", "decode_nvdec", "get_pool", "nvdec_available", "nvdec_supports"]
