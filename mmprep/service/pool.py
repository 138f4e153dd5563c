"""``MediaService``: worker processes per GPU (or CPU workers) that decode and preprocess for the caller.

Why: one Python process caps mmprep at ~14 videos/s whatever the GPU count (the GIL); workers in their
own processes scale with the GPUs. The caller sends bytes (through shared memory) and gets back
``Video`` objects / preprocess outputs whose GPU tensors are opened through ``mmprep.ipc`` (no copy;
the memory stays on the GPU that made it, leased until the caller frees it).

Faults: a worker that dies or hangs (a request older than ``hang_timeout``) is killed, only its
in-flight requests fail (``WorkerCrashedError``), and a new worker takes its place. Each worker has a
bounded queue; a caller that finds every queue full waits up to ``submit_timeout``, then gets
``ServiceBusyError``. Bad media raise the same ``MediaError`` subclasses as in-process calls.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import wait as _wait_readable
from typing import Any

import torch

from .. import errors
from ..source import Source, read_source
from ..config import settings
from ..video import Video
from . import worker as _worker
from .shm import Arena, SharedBytes, from_bytes

__all__ = ["ServiceApi", "MediaService", "WORKERS_PER_GPU", "ServiceError", "WorkerCrashedError", "ServiceBusyError"]

logger = logging.getLogger("mmprep")


class ServiceError(RuntimeError):
    """The service could not run a request (not the media's fault)."""


class WorkerCrashedError(ServiceError):
    """The worker running the request died or hung and was replaced."""


class ServiceBusyError(ServiceError, TimeoutError):
    """Every worker queue stayed full for ``submit_timeout`` seconds."""


@dataclass
class _Worker:
    index: int
    device: str
    process: Any = None
    requests: Any = None
    """Our end of the pipe the worker reads requests from (written under ``sending``); closing it stops the worker."""
    sending: threading.Lock = field(default_factory=threading.Lock)
    responses: Any = None
    """Our end of the pipe the worker answers on (read by the collector thread only)."""
    inflight: dict[int, tuple[Future, float]] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    restarts: int = 0
    served: int = 0
    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_worker.PHASES, 0.0))
    """Seconds the worker spent on the requests it answered (``busy``: from reading the input to the answer) and
    of them on each phase (``worker.PHASES``)."""
    early_exits: int = 0
    """Exits in a row before the worker said it was ready (reset when it is)."""
    broken: str | None = None
    """Why this worker is no longer restarted (it kept dying while starting)."""


class ServiceApi:
    """What callers ask of a media service, local (``MediaService``) or the host's (``host.attach``)."""

    def decode_video(self, source: Source, *, gpu: int | None = None, timeout: float | None = None,
                     **decode: Any) -> Video:
        """``mmprep.decode_video`` in a worker (``device`` is the worker's); frames on that worker's GPU."""
        if "device" in decode:
            raise ValueError("device is chosen by the service: pass gpu=N (or nothing) instead")
        r = self._call("decode_video", source, {"decode": decode}, gpu, timeout)
        frames = r.pop("frames")
        return Video(frames=frames, **r)

    def preprocess_video(self, source: Source, *, gpu: int | None = None, timeout: float | None = None,
                         decode: dict[str, Any] | None = None, **preprocess: Any) -> dict[str, torch.Tensor]:
        """Decode + ``mmprep.preprocess(videos=[...], **preprocess)`` in a worker; the output tensors."""
        if "device" in preprocess or "device" in (decode or {}):
            raise ValueError("device is chosen by the service: pass gpu=N (or nothing) instead")
        return self._call("preprocess_video", source, {"decode": decode or {}, "preprocess": preprocess}, gpu, timeout)

    def decode_image(self, source: Source, *, gpu: int | None = None, timeout: float | None = None,
                     **decode: Any) -> torch.Tensor:
        """``mmprep.decode_images([source])[0]`` in a worker: (3,H,W) uint8, on that worker's GPU (nvJPEG)."""
        if "device" in decode:
            raise ValueError("device is chosen by the service: pass gpu=N (or nothing) instead")
        return self._call("decode_image", source, {"decode": decode}, gpu, timeout)["image"]

    def ping(self, *, delay: float = 0.0, gpu: int | None = None, timeout: float | None = None,
             worker: int | None = None) -> int:
        """Round trip to a worker (answered after ``delay`` seconds there): health checks and tests.
        Returns the most requests that worker had running at once while this one ran (>= 1)."""
        return self._call("ping", None, {"delay": delay}, gpu, timeout, worker=worker)["concurrent"]

    def _call(self, op: str, source: Source | None, options: dict[str, Any], gpu: int | None,
              timeout: float | None, worker: int | None = None) -> dict[str, Any]:
        raise NotImplementedError


WORKERS_PER_GPU = 2
"""Default workers per GPU. One worker is one Python process, and its per-packet demux and bookkeeping (~80 CPU-ms per
10 s 1080p H.264 video) cap it below what one GPU's NVDEC engines decode: measured 2026-11-28 on 4x H200, H.264
12.6 -> 16.7 videos/s on one GPU and 49.1 -> 67.4 on four with a second worker per GPU, HEVC 18.5 -> 34.4 on one
and 33.4 -> 62.7 on two (``bench/results/service_scaling*_h200x4-f86161e.*``). Each worker holds its own CUDA
context and decoder sessions on its GPU."""

IDLE_MAPPINGS_PER_WORKER = 24
"""CUDA IPC mappings a caller keeps open per GPU worker (``mmprep.ipc.keep_idle_mappings``; opening one costs the
caller ~1 CPU-ms). A worker's allocator hands its outputs out of one allocation per request it holds at once — up
to ``threads`` running plus the results the caller still reads — in turn; with 8 per worker a caller opened 0.46
new mappings per video (H.264, 4x H200 x 2 workers, 2026-11-28, ``service_scaling_2026-11-28_h200x4-062a193``), with
24 0.13-0.18 on 1-4 GPUs (``..._h200x4-4928da6``)."""


class MediaService(ServiceApi):
    """A pool of media worker processes; thread-safe, usable as a context manager.

    ``gpus``: GPU ordinals to run workers on (default: every visible GPU; none when CUDA is absent);
    ``workers_per_gpu`` workers each (``WORKERS_PER_GPU``: one Python process decodes slower than a GPU's NVDEC).
    ``cpu_workers``: CPU workers (PyAV + torch), used when there are no GPU workers (default 2 then, 0 otherwise).
    ``threads``: requests each worker runs at once (NVDEC has several engines per GPU, and decode overlaps the
    kernels); ``queue_depth``: requests in flight per worker.
    """

    def __init__(self, *, gpus: list[int] | None = None, workers_per_gpu: int = WORKERS_PER_GPU,
                 cpu_workers: int | None = None, threads: int = 8, queue_depth: int = 16, submit_timeout: float = 60.0,
                 hang_timeout: float = 120.0, start_timeout: float = 300.0, lease_timeout: float = 60.0) -> None:
        if gpus is None:
            gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        if workers_per_gpu < 1 or queue_depth < 1 or threads < 1:
            raise ValueError(f"workers_per_gpu, threads and queue_depth must be >= 1, got {workers_per_gpu}, "
                             f"{threads}, {queue_depth}")
        if cpu_workers is None:
            cpu_workers = 0 if gpus else 2
        devices = [f"cuda:{g}" for g in gpus for _ in range(workers_per_gpu)] + ["cpu"] * cpu_workers
        if not devices:
            raise ValueError("the service needs at least one worker: pass gpus or cpu_workers > 0")
        self._workers = [_Worker(i, d) for i, d in enumerate(devices)]
        self.queue_depth, self.submit_timeout, self.hang_timeout = queue_depth, submit_timeout, hang_timeout
        self.start_timeout, self.lease_timeout, self.threads = start_timeout, lease_timeout, threads
        self._ctx = None
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._collector: threading.Thread | None = None
        self._closing = threading.Event()
        self._arena = Arena()
        self._caller_spent = {"input": 0.0, "open": 0.0}
        weakref.finalize(self, self._arena.trim)  # a service never closed leaves no idle segment at exit

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> "MediaService":
        """Start the workers (``spawn``) and wait until each has warmed up."""
        if self._collector is not None:
            return self
        import torch.multiprocessing as tmp

        self._ctx = tmp.get_context("spawn")
        for w in self._workers:
            self._launch(w)
        self._collector = threading.Thread(target=self._collect, name="mmprep-service", daemon=True)
        self._collector.start()
        deadline = time.monotonic() + self.start_timeout
        for w in self._workers:
            while not w.ready.wait(0.1):
                if w.broken or time.monotonic() > deadline:
                    self.close()
                    raise ServiceError(w.broken or f"worker {w.index} ({w.device}) did not start within "
                                                     f"{self.start_timeout} s")
        keep_mappings_for(w.device for w in self._workers)
        return self

    def close(self) -> None:
        """Stop the workers; requests still in flight fail with ``ServiceError``."""
        self._closing.set()
        with self._lock:
            for w in self._workers:  # the worker reads EOF: it finishes the requests it runs and exits
                _close_requests(w)
        if self._collector is not None:
            self._collector.join(5)
        for w in self._workers:
            if w.process is not None:
                w.process.join(5)
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(5)
            self._fail(w, ServiceError("the service was closed"))
            _close_pipes(w)
        self._collector = None
        self._arena.trim()

    def __enter__(self) -> "MediaService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Per worker: device, pid, requests in flight, restarts, requests answered and the seconds spent on them
        (``busy_s``, of which ``read_s`` copying inputs out of shared memory, ``decode_s`` decoding and ``export_s``
        handing results out: a caller's wall time minus the worker's is the service's own overhead); the seconds this
        process spent on answered requests copying inputs into shared memory (``caller_input_s``) and opening results
        (``caller_open_s``); and the shared-memory segments it made for inputs (``shm_created``: each costs ~8 CPU-ms
        per 6 MB)."""
        with self._lock:
            return {"workers": [{"device": w.device, "pid": w.process.pid if w.process else None,
                                 "inflight": len(w.inflight), "restarts": w.restarts, "served": w.served,
                                 **{f"{k}_s": v for k, v in w.spent.items()}}
                                for w in self._workers],
                    "shm_created": self._arena.created,
                    **{f"caller_{k}_s": v for k, v in self._caller_spent.items()}}

    def _call(self, op: str, source: Source | SharedBytes | None, options: dict[str, Any], gpu: int | None,
              timeout: float | None, worker: int | None = None, opened: bool = True) -> dict[str, Any]:
        """Run ``op`` on ``source``'s bytes on a worker; tensors come back opened here, or (``opened=False``) as the worker
        exported them (``("cuda", mmprep.ipc.Handle)`` / ``("cpu", shared tensor)``), for forwarding."""
        if self._collector is None:
            raise ServiceError("the service is not started: call start() or use it as a context manager")
        data = lent = None
        t0 = time.perf_counter()
        if isinstance(source, SharedBytes):  # already in shared memory (the host service forwards its callers')
            data = source
        elif source is not None:
            data = lent = self._arena.put(read_source(source, max_bytes=settings().max_bytes))
        t_input = time.perf_counter() - t0
        fut: Future = Future()
        rid = next(self._ids)
        w = None
        try:
            w = self._dispatch(rid, op, data, options, fut, gpu, worker)
            try:
                status, payload = fut.result(timeout)
            except TimeoutError:
                raise ServiceError(f"{op} took longer than timeout={timeout} s on worker {w.index} ({w.device})") from None
        finally:
            if lent is not None:  # the worker is done with the bytes once it answered (videos are read in place)
                self._arena.give_back(lent, reuse=w is None or fut.done())
        if status == "media_error":
            cls = getattr(errors, payload[0], errors.MediaError)
            raise cls(payload[1])
        if status == "error":
            raise ServiceError(f"worker {w.index} ({w.device}) failed: {payload[0]}: {payload[1]}")
        t0 = time.perf_counter()
        out = {k: _import(v) for k, v in payload.items()} if opened else payload
        with self._lock:
            self._caller_spent["input"] += t_input
            self._caller_spent["open"] += time.perf_counter() - t0
        return out

    def _dispatch(self, rid, op, data, options, fut, gpu, worker) -> _Worker:
        if worker is not None:
            pool = [self._workers[worker]]
        elif gpu is not None:
            pool = [w for w in self._workers if w.device == f"cuda:{gpu}"]
            if not pool:
                raise ValueError(f"gpu must be one of the service's GPUs {sorted({w.device for w in self._workers})}, got {gpu}")
        else:
            pool = self._workers
        if all(w.broken for w in pool):
            raise ServiceError(pool[0].broken)
        deadline = time.monotonic() + self.submit_timeout
        while True:
            with self._lock:
                w = next((w for w in sorted(pool, key=lambda w: len(w.inflight))  # least loaded first
                          if len(w.inflight) < self.queue_depth and w.ready.is_set() and not w.broken
                          and w.requests is not None), None)
                if w is not None:
                    w.inflight[rid] = (fut, time.monotonic())  # before the send: the answer may come at once
                    conn = w.requests
            if w is not None:
                try:
                    with w.sending:  # not under the service's lock: a worker slow to read holds up its callers only
                        conn.send((rid, op, data, options))
                    return w
                except OSError:  # it exited before reading this request: send it again, to another or the replacement
                    with self._lock:
                        mine = w.inflight.pop(rid, None) is not None  # else the collector already failed it
                        if w.requests is conn:
                            _close_requests(w)
                    if not mine:
                        return w
                    continue
            if time.monotonic() > deadline:
                raise ServiceBusyError(f"every worker queue was full for {self.submit_timeout} s "
                                       f"(queue_depth={self.queue_depth}); retry later or add workers")
            time.sleep(0.002)

    # -- the collector thread ---------------------------------------------------------------------
    def _launch(self, w: _Worker) -> None:
        """Start ``w``'s process with a pipe each way (a request or answer is one write and one read: no feeder
        thread, and a dead end shows as EOF / a broken pipe)."""
        w.ready.clear()
        _close_pipes(w)
        req_r, w.requests = self._ctx.Pipe(duplex=False)
        w.responses, resp_w = self._ctx.Pipe(duplex=False)
        w.process = self._ctx.Process(target=_worker.main, args=(w.index, w.device, req_r, resp_w,
                                                                  self.lease_timeout, self.threads),
                                      name=f"mmprep-worker-{w.index}", daemon=True)
        w.process.start()
        req_r.close()  # the worker's ends: only its copies stay open, so its exit closes the pipes
        resp_w.close()

    def _fail(self, w: _Worker, exc: BaseException) -> None:
        with self._lock:
            pending, w.inflight = w.inflight, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _collect(self) -> None:
        """Hand each worker's answers to their callers; every ``_CHECK_S`` also look for dead or hung workers."""
        next_check = 0.0
        while not self._closing.is_set():
            readers = {w.responses: w for w in self._workers if w.responses is not None}
            for conn in _wait_readable(list(readers), timeout=_CHECK_S):
                w = readers[conn]
                try:
                    rid, status, payload, spent = conn.recv()
                except (EOFError, OSError):  # it exited: the check below replaces it and fails its requests
                    conn.close()
                    w.responses = None
                    continue
                self._answered(w, rid, status, payload, spent)
            if time.monotonic() >= next_check:
                self._check_workers()
                next_check = time.monotonic() + _CHECK_S

    def _answered(self, w: _Worker, rid: Any, status: str, payload: Any, spent: dict[str, float]) -> None:
        if rid == "ready":
            w.early_exits = 0
            w.ready.set()
            return
        with self._lock:
            fut, _ = w.inflight.pop(rid, (None, 0.0))
            w.served += 1
            for k, v in spent.items():
                w.spent[k] = w.spent.get(k, 0.0) + v
        if fut is not None and not fut.done():
            fut.set_result((status, payload))

    def _give_up(self, w: _Worker, why: str) -> None:
        """Stop restarting ``w``: it died ``_EARLY_EXITS`` times while starting; its requests fail."""
        w.broken = (f"worker {w.index} ({w.device}) died {w.early_exits} times while starting ({why}; its "
                    "traceback is on this process's stderr). A common cause: a script that creates the service outside "
                    "`if __name__ == \"__main__\":` (workers start with spawn, which runs the main module again)")
        logger.error("mmprep service: %s", w.broken)
        w.process.join(1)
        self._fail(w, ServiceError(w.broken))

    def _check_workers(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.process is None or w.broken or self._closing.is_set():
                continue
            with self._lock:
                oldest = min((t for _, t in w.inflight.values()), default=now)
            dead = not w.process.is_alive()
            hung = now - oldest > self.hang_timeout
            if not (dead or hung):
                continue
            why = f"exit code {w.process.exitcode}" if dead else f"no answer for {self.hang_timeout} s"
            if dead and not w.ready.is_set():
                w.early_exits += 1
                if w.early_exits >= _EARLY_EXITS:
                    self._give_up(w, why)
                    continue
            logger.warning("mmprep service: worker %d (%s) %s; restarting it", w.index, w.device, why)
            if not dead:
                w.process.kill()
            w.process.join(5)
            with self._lock:  # the replacement first, so a caller woken by the failure finds it
                pending, w.inflight = w.inflight, {}
                w.restarts += 1
                self._launch(w)
            if w.device.startswith("cuda"):  # idle mappings of the dead worker's memory would keep it allocated
                from .. import ipc

                ipc.close_idle()
            for fut, _ in pending.values():
                if not fut.done():
                    fut.set_exception(WorkerCrashedError(
                        f"worker {w.index} ({w.device}) {'died' if dead else 'hung'} ({why}) while running this "
                        "request; it was replaced"))


def keep_mappings_for(devices: Iterable[str]) -> None:
    """Size this process's cache of CUDA IPC mappings for results from workers on ``devices`` (one per worker)."""
    gpu_workers = sum(str(d).startswith("cuda") for d in devices)
    if gpu_workers:
        from .. import ipc

        ipc.keep_idle_mappings(IDLE_MAPPINGS_PER_WORKER * gpu_workers)


_EARLY_EXITS = 3
"""A worker that dies this many times in a row before it is ready is not started again."""

_CHECK_S = 0.05
"""How often the collector looks for dead or hung workers (also under load: answers do not delay it)."""


def _close_requests(w: _Worker) -> None:
    """Close our end of ``w``'s request pipe (callers hold the service's lock; a send in progress finishes first,
    unless it is stuck on a worker that reads nothing: then the kill that follows ends it)."""
    if w.requests is not None and w.sending.acquire(timeout=1.0):
        try:
            w.requests.close()
            w.requests = None
        finally:
            w.sending.release()


def _close_pipes(w: _Worker) -> None:
    _close_requests(w)
    if w.responses is not None:
        w.responses.close()
        w.responses = None


def _import(value: Any) -> Any:
    """A worker's exported tensor as a tensor in this process (GPU: the same memory, by CUDA IPC)."""
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "bytes":  # a small CPU tensor, by value
        return from_bytes(value[1], value[2], value[3])
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("cuda", "cpu"):
        if value[0] == "cuda":
            from .. import ipc

            return ipc.open(value[1])
        return value[1]
    return value
