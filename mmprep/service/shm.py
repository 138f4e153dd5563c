"""Encoded bytes into a worker through reusable POSIX shared memory.

Why: a fresh segment per request costs the caller ~8 CPU-ms for 6 MB (create, size, fault in every page),
more than all the rest of a request; copying into a segment that is already mapped costs ~0.6 ms. So the
caller keeps an ``Arena`` of segments (power-of-two sizes from 1 MiB; as many kept idle as its load had lent at
once), lends one per request and takes it back when the answer arrives; workers keep the segments they have seen
mapped (``Attached``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch

__all__ = ["SharedBytes", "Arena", "Attached", "Mapped", "to_bytes", "from_bytes"]

_MIN_SEGMENT = 1 << 20

COPY_SLICES = max(1, min(4, (os.cpu_count() or 1) // 4))
"""Inputs of ``PARALLEL_COPY_BYTES`` or more are copied in this many slices at once (4 from 16 cores; 1, a plain copy,
below 8): one thread copied 6 MB in 0.52 ms on an H200 host, four in 0.26-0.28 (2026-11-28; 16 and 64 cores), and the
copy is on every request's path. On a 2-core box four slices were slower (0.62 vs 0.47 ms)."""
PARALLEL_COPY_BYTES = 2 << 20

_copier: tuple[int, ThreadPoolExecutor] | None = None
_copier_lock = threading.Lock()


def _copy_pool() -> ThreadPoolExecutor:
    """Threads for the other slices of a copy (made again in a forked child, where the parent's threads are gone)."""
    global _copier
    with _copier_lock:
        if _copier is None or _copier[0] != os.getpid():
            _copier = (os.getpid(), ThreadPoolExecutor(COPY_SLICES - 1, thread_name_prefix="mmprep-copy"))
        return _copier[1]


def copy_in(buf: memoryview, data: bytes | memoryview) -> None:
    """``buf[:len(data)] = data``, large inputs in ``COPY_SLICES`` slices on as many threads (memmove without the GIL)."""
    n = len(data)
    if n < PARALLEL_COPY_BYTES or COPY_SLICES == 1:
        buf[:n] = data
        return
    dst = np.frombuffer(buf, dtype=np.uint8, count=n)
    src = np.frombuffer(data, dtype=np.uint8, count=n)
    to, frm = dst.ctypes.data, src.ctypes.data
    step = -(-n // COPY_SLICES)
    try:
        pool, rest = _copy_pool(), []
        for i in range(step, n, step):
            try:
                rest.append(pool.submit(ctypes.memmove, to + i, frm + i, min(step, n - i)))
            except RuntimeError:  # no new threads while the interpreter exits: copy it here
                ctypes.memmove(to + i, frm + i, min(step, n - i))
        ctypes.memmove(to, frm, step)
        for f in rest:
            f.result()
    finally:
        del dst, src  # the segment cannot close while an array still exports its buffer


@dataclass(frozen=True)
class SharedBytes:
    """``size`` bytes at the start of the shared-memory segment ``name`` (what travels to a worker)."""

    name: str
    size: int


class Mapped:
    """Another process's segment ``name``, mapped here without taking ownership (this process never
    unlinks it): ``buf`` (a memoryview) and ``close()``."""

    def __init__(self, name: str) -> None:
        import _posixshmem

        # Not SharedMemory(name=...): before Python 3.13 that registers the segment with the resource
        # tracker, which spawned workers share with their parent, and which would then unlink it twice.
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
        try:
            self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    def close(self) -> None:
        try:
            self.buf.release()
            self._map.close()
        except BufferError:  # a view of it is still alive somewhere: the mapping goes when the last one does
            pass


def to_bytes(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], str]:
    """``t`` as a flat uint8 tensor (contiguous), its shape and dtype name: what ``from_bytes`` rebuilds from."""
    return t.contiguous().view(-1).view(torch.uint8), tuple(t.shape), str(t.dtype).removeprefix("torch.")


def from_bytes(buf: Any, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """A new tensor of ``shape`` and ``dtype`` (a name) copied from the start of ``buf``."""
    out = torch.empty(shape, dtype=getattr(torch, dtype))
    flat = out.view(-1).view(torch.uint8).numpy()
    flat[:] = np.frombuffer(buf, dtype=np.uint8, count=flat.size)  # numpy: read-only bytes copy without a warning
    return out


class Arena:
    """Caller side: segments lent for one request each. Between requests it keeps idle segments up to the most
    bytes it had lent at once (so a steady load reuses its segments instead of faulting new ones in), at least
    ``idle_bytes`` and at most ``max_idle_bytes``."""

    def __init__(self, idle_bytes: int = 64 << 20, max_idle_bytes: int = 512 << 20) -> None:
        self.idle_bytes, self.max_idle_bytes = idle_bytes, max(idle_bytes, max_idle_bytes)
        self.created = 0  # segments made so far (each ~8 CPU-ms per 6 MB): what the reuse saves, for benchmarks
        self._free: dict[int, list[SharedMemory]] = {}
        self._lent: dict[str, SharedMemory] = {}
        self._idle = self._lent_bytes = self._peak = 0
        self._lock = threading.Lock()

    def put(self, data: bytes) -> SharedBytes:
        """Copy ``data`` into a lent segment; give it back with ``give_back`` once the worker answered."""
        size = max(_MIN_SEGMENT, 1 << (max(1, len(data)) - 1).bit_length())
        with self._lock:
            free = self._free.get(size)
            seg = free.pop() if free else None
            if seg is not None:
                self._idle -= size
            else:
                self.created += 1
        if seg is None:
            seg = SharedMemory(create=True, size=size)
        copy_in(seg.buf, data)
        with self._lock:
            self._lent[seg.name] = seg
            self._lent_bytes += seg.size
            self._peak = max(self._peak, self._lent_bytes)
        return SharedBytes(seg.name, len(data))

    def give_back(self, ref: SharedBytes, reuse: bool = True) -> None:
        """The worker is done with ``ref``: keep its segment for the next request (or free it). ``reuse=False``: given
        up on before the worker answered (a timeout): unlink it rather than lend it again, since the worker may still
        be reading it in place (its mapping keeps the memory until it is done)."""
        with self._lock:
            seg = self._lent.pop(ref.name, None)
            if seg is None:
                return
            self._lent_bytes -= seg.size
            if reuse and self._idle + seg.size <= min(max(self.idle_bytes, self._peak), self.max_idle_bytes):
                self._free.setdefault(seg.size, []).append(seg)
                self._idle += seg.size
                return
        seg.close()
        seg.unlink()

    def segments(self) -> int:
        """Segments this arena holds now (lent + idle): for leak checks."""
        with self._lock:
            return len(self._lent) + sum(len(v) for v in self._free.values())

    def trim(self) -> None:
        """Unlink every idle segment now (lent ones come back to the arena as usual)."""
        with self._lock:
            idle = [s for v in self._free.values() for s in v]
            self._free.clear()
            self._idle = self._peak = 0
        for seg in idle:
            seg.close()
            seg.unlink()


class Attached:
    """Worker side: the callers' segments seen recently, kept mapped (opening one costs a page-table walk
    per use otherwise); thread-safe. ``read`` copies the bytes out; ``view`` lends them in place while a
    request runs (the caller takes its segment back only when the answer arrives)."""

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._open: OrderedDict[str, Mapped] = OrderedDict()
        self._using: dict[str, int] = {}
        self._lock = threading.Lock()

    def _get(self, name: str) -> Mapped:
        with self._lock:
            seg = self._open.pop(name, None)
            self._using[name] = self._using.get(name, 0) + 1
        return seg if seg is not None else Mapped(name)

    def _put(self, name: str, seg: Mapped) -> None:
        with self._lock:
            self._using[name] -= 1
            if not self._using[name]:
                del self._using[name]
            self._open[name] = seg
            for old_name in [k for k in self._open if k not in self._using][:max(0, len(self._open) - self.keep)]:
                self._open.pop(old_name).close()

    def read(self, ref: SharedBytes) -> bytes:
        seg = self._get(ref.name)
        try:
            return bytes(seg.buf[: ref.size])
        finally:
            self._put(ref.name, seg)

    @contextmanager
    def view(self, ref: SharedBytes) -> Iterator[memoryview]:
        """The bytes of ``ref`` in place (no copy), valid inside the ``with`` block only."""
        seg = self._get(ref.name)
        data = seg.buf[: ref.size]
        try:
            yield data
        finally:
            try:
                data.release()
            except BufferError:  # something made from it still lives: it goes with its last view
                pass
            self._put(ref.name, seg)
