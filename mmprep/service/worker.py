"""One media worker process: owns one device (a GPU's NVDEC sessions, kernels and budget, or the CPU).

Requests arrive on a pipe as (id, op, ``SharedBytes`` naming the caller's shared memory, options); results leave on
another as small messages (id, status, payload, seconds the worker spent on the request by phase: ``PHASES``):
GPU tensors as ``mmprep.ipc`` handles (the memory stays here, leased to the caller), CPU tensors
through torch's shared memory (small ones by value). Bad media come back as the ``MediaError`` subclass's name and text.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from .shm import Attached, to_bytes

OPS = ("decode_video", "preprocess_video", "decode_image", "ping")
"""What a worker does: decode a video, decode + preprocess it, decode an image, or answer (after ``delay`` s)."""

_running = [0, 0]  # requests running now, the most seen at once during the current ping
_running_lock = threading.Lock()
_inputs = Attached()


PHASES = ("busy", "read", "decode", "export")
"""The request's seconds in the worker, and of them: copying the input out of shared memory (images; videos are
read in place), decoding, handing results out (what is left of ``busy`` is preprocessing and bookkeeping)."""

SMALL_BYTES = 64 << 10
"""CPU tensors up to this size travel by value: sharing one costs a segment and a descriptor hand-off."""


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's largest mmap threshold on 64-bit hosts (``DEFAULT_MMAP_THRESHOLD_MAX``)."""


def keep_heap(mb: int) -> bool:
    """Keep up to ``mb`` MiB of freed host memory for reuse (glibc ``mallopt``): each request's host buffers then come
    from pages already mapped instead of fresh ones the kernel must fault in. True where it was applied (glibc)."""
    if mb <= 0:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trim = min(mb << 20, (1 << 31) - 1)
    return bool(mallopt(M_TRIM_THRESHOLD, trim)) and bool(mallopt(M_MMAP_THRESHOLD, min(MMAP_THRESHOLD_MAX, trim)))


def _export(t: torch.Tensor, lease_timeout: float) -> Any:
    if t.is_cuda:
        from .. import ipc

        return ("cuda", ipc.share(t, timeout=lease_timeout))
    if t.numel() * t.element_size() <= SMALL_BYTES:  # e.g. grid_thw
        flat, shape, dtype = to_bytes(t)
        return ("bytes", flat.numpy().tobytes(), shape, dtype)
    return ("cpu", t.share_memory_() if not t.is_shared() else t)


def _video_fields(video) -> dict[str, Any]:
    return {k: getattr(video, k) for k in ("indices", "timestamps", "fps", "duration", "total_frames", "width",
                                          "height", "codec", "backend", "rotation")}


def run_op(op: str, data: bytes | memoryview, device: str, options: dict[str, Any], spent: dict[str, float]) -> dict[str, Any]:
    """Do ``op`` on ``data``: the result's fields, tensors still this process's (``export`` hands them out); the
    seconds spent decoding go to ``spent["decode"]``."""
    import mmprep

    if op == "ping":
        with _running_lock:
            _running[1] = _running[0]
        time.sleep(float(options.get("delay", 0.0)))
        with _running_lock:
            return {"concurrent": max(_running[1], _running[0])}
    decode = dict(options.get("decode", {}))
    t0 = time.perf_counter()
    if op == "decode_image":
        (media,) = mmprep.decode_images([data], device=device, **decode)
    else:
        media = mmprep.decode_video(data, device=device, **decode)
    spent["decode"] = time.perf_counter() - t0
    if op == "decode_image":
        return {"image": media}
    if op == "decode_video":
        return {"frames": media.frames, **_video_fields(media)}
    out = mmprep.preprocess(videos=[media], device=media.frames.device, **dict(options.get("preprocess", {})))
    del media
    return out


def export(result: dict[str, Any], lease_timeout: float) -> dict[str, Any]:
    """``result`` with each tensor exported for the caller's process (GPU: leased by CUDA IPC)."""
    return {k: _export(v, lease_timeout) if isinstance(v, torch.Tensor) else v for k, v in result.items()}


def main(index: int, device: str, requests: Connection, responses: Connection, lease_timeout: float,
         threads: int = 8) -> None:
    """Worker loop: warm up, say ready, then run requests on ``threads`` threads until the caller's end of the
    request pipe closes (``close()``, or the caller exited)."""
    import mmprep
    from mmprep.config import settings
    from mmprep.errors import MediaError

    keep_heap(settings().worker_heap_mb)
    send_lock = threading.Lock()  # the threads answer on one pipe; this process is its only writer

    def answer(msg: tuple) -> None:
        with send_lock:
            responses.send(msg)

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        from mmprep import kernels

        kernels.fused(wait=True)  # built once per machine (cached on disk), loaded per worker
    answer(("ready", "ready", None, dict.fromkeys(PHASES, 0.0)))
    del mmprep

    def serve(rid, op, data, options) -> None:
        with _running_lock:
            _running[0] += 1
            _running[1] = max(_running[1], _running[0])
        spent = dict.fromkeys(PHASES, 0.0)
        t0 = t1 = time.perf_counter()
        try:
            if op not in OPS:
                raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
            if data is None or op == "decode_image":  # images are small: a copy costs less than holding the segment
                raw = _inputs.read(data) if data is not None else b""
                spent["read"] = time.perf_counter() - t0
                result = run_op(op, raw, device, options, spent)
            else:  # videos decode from the caller's segment in place (6 MB: a copy took ~1 ms of each request)
                with _inputs.view(data) as raw:
                    result = run_op(op, raw, device, options, spent)
            t1 = time.perf_counter()
            status, payload = "ok", export(result, lease_timeout)
            del result
        except MediaError as e:
            status, payload = "media_error", (type(e).__name__, str(e))
        except Exception as e:  # noqa: BLE001 - reported to the caller, the worker lives on
            status, payload = "error", (type(e).__name__, str(e))
        finally:
            with _running_lock:
                _running[0] -= 1
        t2 = time.perf_counter()
        spent["busy"], spent["export"] = t2 - t0, (t2 - t1 if status == "ok" else 0.0)
        try:
            answer((rid, status, payload, spent))
        except OSError:  # the caller is gone: nobody to answer (the readers see EOF and end)
            pass
        except Exception as e:  # noqa: BLE001 - e.g. a result that does not pickle: the caller still gets an answer
            answer((rid, "error", (type(e).__name__, f"the answer could not be sent: {e}"), spent))

    stop, reading = threading.Event(), threading.Lock()

    def take_requests() -> None:
        """Read the next request and run it, on each of ``threads`` threads in turn (leader/follower): a request that
        finds a thread idle runs on the thread that read it, without a hand-off between threads."""
        while True:
            with reading:
                if stop.is_set():
                    return
                try:
                    msg = requests.recv()
                except (EOFError, OSError):  # the caller closed the service or exited
                    stop.set()
                    return
            serve(*msg)

    runners = [threading.Thread(target=take_requests, name=f"mmprep-worker-{index}-{i}") for i in range(threads)]
    for t in runners:
        t.start()
    for t in runners:  # the requests already running finish first
        t.join()
