"""``MMPREP_*`` environment settings, read once at first use (``settings()``)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

__all__ = ["Settings", "settings"]


def _number(name: str, default, minimum, parse, what: str, maximum=None):
    """``name`` parsed with ``parse`` (``default`` when unset), refused outside ``minimum``..``maximum``."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    return _number(name, default, minimum, int, "an integer", maximum)


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    return _number(name, default, minimum, float, "a number")


def _devices(name: str) -> tuple[int, ...] | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of GPU ordinals, got {raw!r}") from None


def _choice(name: str, default: str, allowed: dict[str, str]) -> str:
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return allowed[raw]


def _device(name: str) -> str:
    from .device import parse_device

    raw = os.environ.get(name, "").strip().lower() or "auto"
    try:
        parse_device(raw)
    except ValueError:
        raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N, got {raw!r}") from None
    return raw


@dataclass(frozen=True)
class Settings:
    """Process-wide defaults; every one can be overridden per call where the API takes it."""

    max_pixels: int
    """Largest width*height accepted for a video frame (default 8192*4320)."""
    max_frames: int
    """Most frames one ``decode_video`` call may return (default 4096)."""
    max_bytes: int
    """Largest encoded input accepted, in bytes (default 2 GiB)."""
    nvdec_sessions_per_gpu: int
    """Decoder pool size per GPU; 0 means one per NVDEC engine of that GPU."""
    nvdec_devices: tuple[int, ...] | None
    """GPU ordinals the NVDEC pool may use; None means all visible GPUs."""
    disable_nvdec: bool
    """Force the CPU backend for ``device="auto"``."""
    nvdec_split: str
    """Decode the two halves of a long plan (cut at a keyframe) on two NVDEC sessions at once when a
    second one is free: lower latency at low load, unchanged throughput at full load. "threads" (default): the
    second half on a helper thread; "interleave": one thread feeds both sessions a packet at a time (no GIL
    hand-offs between threads); "off": one pass on one session."""
    nvdec_backend: str
    """"cuvid": mmprep's own binding of the driver's NVDEC API, which maps only sampled pictures (default where
    the driver's libnvcuvid loads); "pynvvideocodec": PyNvVideoCodec's decoder, which maps and copies every
    decoded picture. PyNvVideoCodec's demuxer feeds both."""
    nvdec_display_delay: int
    """cuvid backend: pictures NVDEC's parser decodes ahead of the one being mapped (0 = map each as soon as it is
    decoded, leaving the engine idle while a sampled picture is converted; NVIDIA recommends 2..4)."""
    cpu_threads: int
    """FFmpeg decode threads for the CPU backend; 0 lets FFmpeg choose."""
    max_image_pixels: int
    """Largest image width*height accepted (vLLM's VLLM_MAX_IMAGE_PIXELS default)."""
    min_image_side: int
    """Smallest image side accepted; 1-pixel-wide images hold no usable content."""
    gpu_memory_gb: float
    """GiB of decoded frames mmprep may hold on each GPU at once (0 = no limit); decodes wait for room."""
    kernels: bool
    """Build and use the fused CUDA kernels of csrc/ (JIT, needs nvcc); else the torch path."""
    processor: str
    """vLLM processor hook: "auto" (on with mmprep's loader or connector, on a GPU), "on" or "off"."""
    processor_device: str
    """Device of the vLLM processor hook for inputs on the host: "auto" (cuda if present), "cuda[:N]", "cpu"."""
    workers: int
    """``mmprep.service.shared()``: workers per GPU (CPU workers without CUDA); 0 = decode in-process."""
    media_cache_mb: int
    """vLLM loaders: MiB of decoded videos kept for repeated requests (``mmprep.vllm.media_cache``); 0 = off."""
    service: str
    """``mmprep.service.shared()``: "" (a service of this process), "host" (the host's, at its default
    socket) or the socket path of the host's service (see ``mmprep.service.host``)."""
    worker_heap_mb: int
    """Service workers (glibc): MiB of freed host memory a worker keeps for reuse instead of handing it back to the
    kernel; allocations up to 32 MiB come from that heap (0 = glibc's defaults)."""
    ipc_idle_mappings: int
    """``mmprep.ipc`` consumers: CUDA IPC mappings kept open for reuse once unused (opening one costs ~1 ms)."""
    engine_ipc: str
    """vLLM processor hook on a vLLM that sends no device tensors (0.26): hand the pixels to the engine by CUDA
    IPC tickets (``mmprep.vllm.handoff``) instead of through host memory. "auto": where it is known to be safe (a
    vLLM without a GPU-tensor transport of its own, a ``vllm serve`` command line without parallel sizes or a
    config file, processor cache off); "on": also elsewhere the cache is off and no parallel size shows; "off"."""
    engine_ipc_gb: float
    """GiB of processor outputs that may wait on the GPU for the engine at once; requests over it go through
    host memory. 2: outside vLLM's memory accounting (unless --mm-ipc-gpu-memory-gb is set), so small; the
    measured server (concurrency 16, 63 MB per video) could keep at most ~1 GiB waiting."""


@functools.lru_cache(maxsize=1)
def settings() -> Settings:
    """Read the ``MMPREP_*`` variables once; later changes to the environment are not seen."""
    return Settings(
        max_pixels=_int("MMPREP_MAX_PIXELS", 8192 * 4320, minimum=1),
        max_frames=_int("MMPREP_MAX_FRAMES", 4096, minimum=1),
        max_bytes=_int("MMPREP_MAX_BYTES", 2 << 30, minimum=1),
        nvdec_sessions_per_gpu=_int("MMPREP_NVDEC_SESSIONS_PER_GPU", 0),
        nvdec_devices=_devices("MMPREP_NVDEC_DEVICES"),
        disable_nvdec=_bool("MMPREP_DISABLE_NVDEC", False),
        nvdec_split=_choice("MMPREP_NVDEC_SPLIT", "threads", {
            **dict.fromkeys(("1", "true", "yes", "on", "threads"), "threads"), "interleave": "interleave",
            **dict.fromkeys(("0", "false", "no", "off"), "off")}),
        nvdec_backend=_choice("MMPREP_NVDEC_BACKEND", "cuvid", {"cuvid": "cuvid", "pynvvideocodec": "pynvvideocodec"}),
        nvdec_display_delay=_int("MMPREP_NVDEC_DISPLAY_DELAY", 2, maximum=16),
        cpu_threads=_int("MMPREP_CPU_THREADS", 0),
        max_image_pixels=_int("MMPREP_MAX_IMAGE_PIXELS", 178_956_970, minimum=1),
        min_image_side=_int("MMPREP_MIN_IMAGE_SIDE", 2, minimum=1),
        gpu_memory_gb=_float("MMPREP_GPU_MEMORY_GB", 0.0),
        kernels=_bool("MMPREP_KERNELS", True),
        processor=_choice("MMPREP_PROCESSOR", "auto", {"auto": "auto", "1": "on", "on": "on", "0": "off", "off": "off"}),
        processor_device=_device("MMPREP_PROCESSOR_DEVICE"),
        workers=_int("MMPREP_WORKERS", 0),
        media_cache_mb=_int("MMPREP_MEDIA_CACHE_MB", 0),
        service=os.environ.get("MMPREP_SERVICE", "").strip(),
        worker_heap_mb=_int("MMPREP_WORKER_HEAP_MB", 256),
        ipc_idle_mappings=_int("MMPREP_IPC_IDLE_MAPPINGS", 16),
        engine_ipc=_choice("MMPREP_ENGINE_IPC", "auto", {"auto": "auto", **dict.fromkeys(("1", "true", "yes", "on"), "on"),
                                                          **dict.fromkeys(("0", "false", "no", "off"), "off")}),
        engine_ipc_gb=_float("MMPREP_ENGINE_IPC_GB", 2.0),
    )
