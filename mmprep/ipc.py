"""Zero-copy hand-off of CUDA tensors to another process, under a lease the producer enforces.

``share(tensor) -> Handle`` (producer) and ``open(handle) -> tensor`` (consumer) map the same
device memory into the consumer through CUDA IPC: no copy, no allocation on the consumer side.
Unlike ``torch.multiprocessing``'s reference counting, the producer owns the memory: it keeps the
tensor alive until the consumer releases it (``release``, or freeing the opened tensor), the
consumer process dies, or nobody opens it within ``timeout`` (or holds it past ``max_hold``) —
then the memory goes back to the producer's allocator, so a lost message or a crashed consumer
cannot leak GPU memory. The handle is a small picklable object;
it names the GPU by UUID, so processes with different ``CUDA_VISIBLE_DEVICES`` agree on the device.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import logging
import mmap
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .config import settings
from .device import wait_idle

__all__ = ["Handle", "LeaseExpiredError", "share", "open", "release", "wait_released", "outstanding", "close_idle",
           "keep_idle_mappings", "consumer_stats"]

logger = logging.getLogger("mmprep")

_SLOTS = 4096
_SLOT_BYTES = 16  # uint32 generation, uint32 state, int32 consumer pid, pad
_FREE, _SHARED, _OPENED, _RELEASED = 0, 1, 2, 3
_POLL_S = 0.02


class LeaseExpiredError(RuntimeError):
    """The producer already reclaimed the memory behind a handle (released, timed out, or gone)."""


@dataclass(frozen=True)
class Handle:
    """Everything a consumer needs to map a producer's CUDA tensor; pickle it to send it."""

    mem: bytes
    """CUDA IPC handle of the allocation that holds the tensor."""
    offset: int
    """Bytes from the allocation base to the tensor's first element."""
    device_uuid: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    """``str(torch.dtype)`` without the ``torch.`` prefix."""
    nbytes_span: int
    """Bytes the tensor's elements span from its first element."""
    event: bytes
    """IPC handle of an event recorded after the producer's last write; the consumer waits on it."""
    table: str
    slot: int
    generation: int
    producer_pid: int


# ---------------------------------------------------------------- CUDA driver calls (libcuda)
class _IpcMemHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]  # c_ubyte, not c_char: c_char arrays stop at a NUL


_cuda = None


def _driver():
    global _cuda
    if _cuda is None:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuMemGetAddressRange_v2.argtypes = [
            ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64]
        lib.cuIpcGetMemHandle.argtypes = [ctypes.POINTER(_IpcMemHandle), ctypes.c_uint64]
        lib.cuIpcOpenMemHandle_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), _IpcMemHandle, ctypes.c_uint]
        lib.cuIpcCloseMemHandle.argtypes = [ctypes.c_uint64]
        lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        lib.cuCtxPushCurrent_v2.argtypes = [ctypes.c_void_p]
        lib.cuCtxPopCurrent_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        _cuda = lib
    return _cuda


def _check(rc: int, what: str) -> None:
    if rc != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(rc, ctypes.byref(name))
        hint = ""
        if what == "cuIpcGetMemHandle":
            hint = " (memory from expandable segments or a non-default allocator cannot be shared this way)"
        raise RuntimeError(f"{what} failed: {(name.value or b'?').decode()} ({rc}){hint}")


_contexts: dict[int, int] = {}


class _bound:
    """Make device ``dev``'s primary context (the one torch uses) current for driver calls."""

    def __init__(self, dev: int) -> None:
        self.dev = dev

    def __enter__(self):
        lib = _driver()
        ctx = _contexts.get(self.dev)
        if ctx is None:
            torch.cuda.init()
            cu_dev, c = ctypes.c_int(), ctypes.c_void_p()
            _check(lib.cuDeviceGet(ctypes.byref(cu_dev), self.dev), "cuDeviceGet")
            _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(c), cu_dev), "cuDevicePrimaryCtxRetain")
            ctx = _contexts[self.dev] = c.value
        _check(lib.cuCtxPushCurrent_v2(ctypes.c_void_p(ctx)), "cuCtxPushCurrent")
        return lib

    def __exit__(self, *exc: object) -> None:
        _driver().cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))


@functools.cache
def _device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


def _local_device(uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if _device_uuid(i) == uuid:
            return i
    raise RuntimeError(
        f"the GPU that holds this tensor (uuid {uuid}) is not visible in this process; "
        "open handles on the same GPU the producer used (check CUDA_VISIBLE_DEVICES)"
    )


# ---------------------------------------------------------------- lease table (shared file)
def _table_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class _Table:
    """A small file both sides map: per slot the generation, state and consumer pid."""

    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _SLOTS * _SLOT_BYTES)
            self._mm = mmap.mmap(fd, _SLOTS * _SLOT_BYTES)
        finally:
            os.close(fd)
        self.words = memoryview(self._mm).cast("i")

    def get(self, slot: int) -> tuple[int, int, int]:
        w = self.words
        return w[slot * 4] & 0xFFFFFFFF, w[slot * 4 + 1], w[slot * 4 + 2]

    def set_state(self, slot: int, state: int, pid: int | None = None) -> None:
        if pid is not None:
            self.words[slot * 4 + 2] = pid
        self.words[slot * 4 + 1] = state

    def set_generation(self, slot: int, generation: int) -> None:
        self.words[slot * 4] = generation if generation < 2**31 else generation - 2**32


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (killed, not yet reaped by its parent) counts as gone."""
    try:
        with builtins.open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Lease:
    tensor: torch.Tensor | None
    event: tuple[int, torch.cuda.Event, bytes]
    """(device, interprocess event recorded after the last write, its IPC handle): back to the pool when it ends."""
    open_deadline: float
    max_hold: float | None
    generation: int
    done: threading.Event
    opened_at: float | None = None


class _Producer:
    """Owns this process's lease table, the tensors on loan and the thread that reclaims them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        path = os.path.join(_table_dir(), f"mmprep-ipc-{self.pid}-{secrets.token_hex(4)}")
        self.table = _Table(path, create=True)
        self.leases: dict[int, _Lease] = {}
        self.events: list[tuple[int, torch.cuda.Event, bytes]] = []
        """Interprocess events of ended leases, for reuse: making one and its IPC handle costs a few driver calls
        per share, and consumers keep the events they opened (``open``), so a reused one costs them nothing."""
        self.generations = [0] * _SLOTS
        self.cond = threading.Condition()
        self._next = 0
        threading.Thread(target=self._reap, name="mmprep-ipc-reaper", daemon=True).start()
        import atexit

        atexit.register(self._unlink)

    def _unlink(self) -> None:
        try:
            os.unlink(self.table.path)
        except FileNotFoundError:
            pass

    def event(self, dev: int) -> tuple[int, torch.cuda.Event, bytes]:
        """An interprocess event on ``dev`` no lease uses (one of an ended lease, or a new one)."""
        with self.cond:
            for i in range(len(self.events) - 1, -1, -1):
                if self.events[i][0] == dev:
                    return self.events.pop(i)
        event = torch.cuda.Event(interprocess=True)
        event.record(torch.cuda.current_stream(dev))  # made on first record; its IPC handle exists from then on
        return dev, event, bytes(event.ipc_handle())

    def add(self, tensor: torch.Tensor, event: tuple[int, torch.cuda.Event, bytes], timeout: float,
            max_hold: float | None) -> tuple[int, int]:
        with self.cond:
            for k in range(_SLOTS):
                slot = (self._next + k) % _SLOTS
                if slot not in self.leases:
                    break
            else:
                raise RuntimeError(f"more than {_SLOTS} tensors on loan at once; release some first")
            self._next = slot + 1
            gen = self.generations[slot] = (self.generations[slot] + 1) & 0xFFFFFFFF
            self.table.set_state(slot, _SHARED, pid=0)
            self.table.set_generation(slot, gen)
            self.leases[slot] = _Lease(tensor, event, time.monotonic() + timeout, max_hold, gen, threading.Event())
            self.cond.notify_all()
            return slot, gen

    def _drop(self, slot: int, why: str) -> None:
        lease = self.leases.pop(slot)
        lease.tensor = None
        # the consumer queued its wait on the event when it opened the handle: recording it again cannot hold it up
        self.events.append(lease.event)
        self.generations[slot] = (self.generations[slot] + 1) & 0xFFFFFFFF
        self.table.set_generation(slot, self.generations[slot])
        self.table.set_state(slot, _FREE, pid=0)
        lease.done.set()
        if why != "released":
            logger.warning("mmprep.ipc: reclaimed a shared tensor (slot %d): %s", slot, why)

    def _reap(self) -> None:
        while True:
            with self.cond:
                while not self.leases:
                    self.cond.wait()
                now = time.monotonic()
                for slot, lease in list(self.leases.items()):
                    gen, state, pid = self.table.get(slot)
                    if state == _RELEASED:
                        self._drop(slot, "released")
                    elif state == _OPENED:
                        if lease.opened_at is None:
                            lease.opened_at = now
                        if pid and not _alive(pid):
                            self._drop(slot, f"consumer process {pid} is gone")
                        elif lease.max_hold is not None and now > lease.opened_at + lease.max_hold:
                            self._drop(slot, f"consumer held it over max_hold={lease.max_hold} s")
                    elif now > lease.open_deadline:
                        self._drop(slot, "nobody opened it within the timeout")
            time.sleep(_POLL_S)


_producer: _Producer | None = None
_producer_lock = threading.Lock()


def _get_producer() -> _Producer:
    global _producer
    with _producer_lock:
        if _producer is None or _producer.pid != os.getpid():
            _producer = _Producer()  # first use, or a fork: a child gets its own table
        return _producer


# ---------------------------------------------------------------- public API
def share(tensor: torch.Tensor, *, timeout: float = 60.0, max_hold: float | None = None) -> Handle:
    """Lend ``tensor`` (CUDA) to another process until the consumer releases it.

    Reclaimed early when nobody opens it within ``timeout`` seconds, when the consumer process
    exits, or when it holds the tensor longer than ``max_hold`` seconds (None: no limit).
    """
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cuda":
        raise ValueError(
            f"tensor must be a CUDA torch.Tensor, got {type(tensor).__name__} on "
            f"{getattr(tensor, 'device', None)}; CPU tensors go through torch.multiprocessing"
        )
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if tensor.numel() == 0:
        raise ValueError(f"tensor is empty (shape {tuple(tensor.shape)}); nothing to share")
    if max_hold is not None and not max_hold > 0:
        raise ValueError(f"max_hold must be None or > 0 seconds, got {max_hold}")
    dev = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    lib = _driver()
    elem = tensor.element_size()
    span = (1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()) if n > 0)) * elem
    with _bound(dev):
        base, size = ctypes.c_uint64(), ctypes.c_size_t()
        _check(lib.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(tensor.data_ptr())),
               "cuMemGetAddressRange")
        h = _IpcMemHandle()
        _check(lib.cuIpcGetMemHandle(ctypes.byref(h), base), "cuIpcGetMemHandle")
    p = _get_producer()
    event = p.event(dev)
    event[1].record(torch.cuda.current_stream(dev))
    slot, gen = p.add(tensor, event, timeout, max_hold)
    return Handle(
        mem=bytes(h.reserved), offset=tensor.data_ptr() - base.value, device_uuid=_device_uuid(dev),
        shape=tuple(tensor.shape), stride=tuple(tensor.stride()), dtype=str(tensor.dtype).removeprefix("torch."),
        nbytes_span=span, event=event[2], table=p.table.path, slot=slot, generation=gen,
        producer_pid=os.getpid(),
    )


def wait_released(handle: Handle, timeout: float | None = None) -> bool:
    """Producer side: wait until the lease behind ``handle`` has ended; True when it has."""
    p = _get_producer()
    with p.cond:
        lease = p.leases.get(handle.slot)
    if lease is None or lease.generation != handle.generation:
        return True
    deadline = None if timeout is None else time.monotonic() + timeout
    while not lease.done.wait(0.0005):  # notice a release sooner than the reaper's poll would
        gen, state, _ = p.table.get(handle.slot)
        if state == _RELEASED and gen == handle.generation:
            with p.cond:
                if p.leases.get(handle.slot) is lease:
                    p._drop(handle.slot, "released")
        elif deadline is not None and time.monotonic() > deadline:
            return lease.done.is_set()
    return True


def outstanding() -> int:
    """Producer side: how many shared tensors are still on loan."""
    p = _producer
    if p is None:
        return 0
    with p.cond:
        return len(p.leases)


# consumer side ------------------------------------------------------------------------------
_tables: dict[str, _Table] = {}
_maps: dict[tuple[bytes, int], list[int]] = {}  # (mem handle, device) -> [base pointer, open count]
# Mappings nobody uses stay open for reuse (opening one costs about a millisecond): the producer's
# caching allocator hands out the same few segments again and again. Least recently used closes first;
# at most MMPREP_IPC_IDLE_MAPPINGS (default 16) stay open.
_idle: "OrderedDict[tuple[bytes, int], int]" = OrderedDict()
_idle_floor = [0]  # raised by keep_idle_mappings
# Producers reuse their events (``_Producer.events``): the ones opened here stay open, keyed by producer and handle.
_events: "OrderedDict[tuple[int, int, bytes], torch.cuda.Event]" = OrderedDict()
_MAX_EVENTS = 1024
_counts = {"opened": 0, "mapped": 0, "unmapped": 0, "events": 0}


def keep_idle_mappings(n: int) -> None:
    """Keep at least ``n`` unused mappings open in this process (never lowers what is kept).

    Why: a caller of many producers (the media service's workers) cycles through a few allocations of each;
    with more in rotation than the cache holds, every open maps again (~1 ms) and every close unmaps."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    with _consumer_lock:
        _idle_floor[0] = max(_idle_floor[0], n)


def consumer_stats() -> dict[str, int]:
    """Consumer side, since the process started: handles opened, allocations mapped (``cuIpcOpenMemHandle``,
    ~1 ms each) and unmapped, producers' events opened. ``mapped`` and ``events`` well below ``opened`` mean the
    caches are doing their job."""
    with _consumer_lock:
        return dict(_counts)


def _close_mapping(key: tuple[bytes, int], base: int) -> None:
    _counts["unmapped"] += 1  # callers hold _consumer_lock
    with _bound(key[1]) as lib:
        lib.cuIpcCloseMemHandle(ctypes.c_uint64(base))


def close_idle() -> None:
    """Consumer side: close the cached mappings no opened tensor uses any more."""
    with _consumer_lock:
        while _idle:
            key, base = _idle.popitem(last=False)
            _maps.pop(key, None)
            _close_mapping(key, base)
_consumer_lock = threading.Lock()


def _table(path: str) -> _Table:
    with _consumer_lock:
        t = _tables.get(path)
        if t is None:
            try:
                t = _tables[path] = _Table(path, create=False)
            except FileNotFoundError:
                raise LeaseExpiredError(f"the producer's lease table {path} is gone (producer exited)") from None
        return t


class _Mapping:
    """The consumer's view of one opened handle; unmaps and releases when the tensor dies."""

    def __init__(self, handle: Handle, device: int, base: int) -> None:
        self.handle, self.device, self.base, self.closed = handle, device, base, False
        self.__cuda_array_interface__ = {
            "shape": (handle.nbytes_span,), "typestr": "|u1", "data": (base + handle.offset, False),
            "version": 3, "strides": None, "stream": None,
        }

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        h = self.handle
        # Work queued on this process's stream may still read the memory: finish it before the
        # producer may hand the memory to something else.
        wait_idle(torch.cuda.current_stream(self.device))
        t = _tables.get(h.table)
        if t is not None:
            gen, _, _ = t.get(h.slot)
            if gen == h.generation:
                t.set_state(h.slot, _RELEASED)
        key = (h.mem, self.device)
        with _consumer_lock:
            entry = _maps.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    _idle[key] = entry[0]
                    while len(_idle) > max(settings().ipc_idle_mappings, _idle_floor[0]):
                        old_key, old_base = _idle.popitem(last=False)
                        _maps.pop(old_key, None)
                        _close_mapping(old_key, old_base)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver or torch may be gone
            pass


def open(handle: Handle) -> torch.Tensor:  # noqa: A001 - the issue's name for it
    """Consumer side: map the producer's tensor (no copy); waits on the producer's last write."""
    if not isinstance(handle, Handle):
        raise ValueError(f"handle must be a mmprep.ipc.Handle, got {type(handle).__name__}")
    t = _table(handle.table)
    gen, state, _ = t.get(handle.slot)
    if gen != handle.generation or state not in (_SHARED, _OPENED):
        raise _ended(handle)
    if handle.producer_pid == os.getpid():  # CUDA cannot map a process's own export: hand the tensor over
        return _take_own(handle)
    dev = _local_device(handle.device_uuid)
    t.set_state(handle.slot, _OPENED, pid=os.getpid())
    key = (handle.mem, dev)
    with _consumer_lock:
        entry = _maps.get(key)
        _idle.pop(key, None)
        if entry is None:
            ptr = ctypes.c_uint64()
            raw_handle = _IpcMemHandle((ctypes.c_ubyte * 64).from_buffer_copy(handle.mem))
            try:
                with _bound(dev) as lib:  # flag 1: CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
                    _check(lib.cuIpcOpenMemHandle_v2(ctypes.byref(ptr), raw_handle, 1), "cuIpcOpenMemHandle")
            except BaseException:
                t.set_state(handle.slot, _RELEASED)  # unusable here: let the producer reclaim it now
                raise
            entry = _maps[key] = [ptr.value, 0]
            _counts["mapped"] += 1
        entry[1] += 1
        _counts["opened"] += 1
    mapping = _Mapping(handle, dev, entry[0])
    dtype = getattr(torch, handle.dtype)
    with torch.cuda.device(dev):
        raw = torch.as_tensor(mapping, device=f"cuda:{dev}")
        torch.cuda.current_stream(dev).wait_event(_opened_event(dev, handle))
    flat = raw.view(dtype)
    out = flat.as_strided(handle.shape, handle.stride, 0)
    del mapping
    return out


def _opened_event(dev: int, handle: Handle) -> torch.cuda.Event:
    """The producer's event behind ``handle``, opened once per event (its record is the one the wait sees)."""
    key = (dev, handle.producer_pid, handle.event)
    with _consumer_lock:
        event = _events.pop(key, None)
        if event is None:
            event = torch.cuda.Event.from_ipc_handle(dev, handle.event)
            _counts["events"] += 1
        _events[key] = event
        while len(_events) > _MAX_EVENTS:
            _events.popitem(last=False)
    return event


def _take_own(handle: Handle) -> torch.Tensor:
    """``open`` in the producing process: the shared tensor itself; the lease ends (refcounting keeps it alive)."""
    p = _producer
    if p is not None and p.pid == os.getpid():
        with p.cond:
            lease = p.leases.get(handle.slot)
            if lease is not None and lease.generation == handle.generation and lease.tensor is not None:
                tensor = lease.tensor
                p._drop(handle.slot, "released")
                return tensor
    raise _ended(handle)


def _ended(handle: Handle) -> LeaseExpiredError:
    return LeaseExpiredError(
        f"the lease for this handle has ended (slot {handle.slot}: released, timed out or reclaimed)")


def release(handle: Handle) -> None:
    """Consumer side: end the lease now (also happens when the opened tensor is freed)."""
    t = _table(handle.table)
    gen, _, _ = t.get(handle.slot)
    if gen == handle.generation:
        t.set_state(handle.slot, _RELEASED)
