"""Processor outputs handed to the engine by CUDA IPC on a vLLM that sends no device tensors (0.26).

Why: vLLM 0.26 takes processor outputs to its engine through host memory only: each request's pixels
(63 MB of bfloat16 for a 10 s 1080p video with Qwen2-VL) are copied to the host, serialized, sent over a
socket, decoded, pinned and copied back to the GPU. Measured 2026-11-28 (H200, vLLM 0.26): the engine spends
~60 CPU-ms more per request than with the pixels cached, and serves 0.85x of that ceiling.

Here the processor shares each item's GPU tensor (``mmprep.ipc``) and puts a *ticket* in its place: a uint8
tensor with the item's row count and ``WIDTH`` columns whose first bytes encode the handle. vLLM slices and
batches tickets exactly like pixels (by rows), but keeps them on the host (``fields_on_cpu``); the model's input
parser, wrapped in the engine (``install_consumers``), turns them back into the GPU pixels (``unpack``). 0.32
does not need this: it forwards device tensors itself (``--mm-tensor-ipc torch_shm``).

Limits: one engine process opens each ticket (DP=1, TP=1, PP=1: ``unpack`` refuses otherwise) on a GPU it can
see; the processor cache must be off (a cached ticket would outlive its lease); at most
``MMPREP_ENGINE_IPC_GB`` of outputs wait for the engine at once (requests over it go through host memory).
"""

from __future__ import annotations

import dataclasses
import importlib
import queue
import struct
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable

import torch

from .. import ipc

__all__ = ["WIDTH", "encode", "decode", "pack", "unpack", "is_ticket", "fields_on_cpu", "install_consumers",
           "pending_bytes"]

WIDTH = 64
"""Columns of a ticket. An item's ticket has the item's rows, so its first ``rows * WIDTH`` bytes must hold the
handle (about 300 bytes): Qwen-VL items have 16 rows or more (4x4 patches at the least)."""

MAGIC = b"MMPT"
_VERSION = 1
OPEN_TIMEOUT_S = 600.0
"""How long a shared output waits to be opened by the engine (queued requests wait too) before it is reclaimed."""

_DTYPES = ("bfloat16", "float32", "float16", "uint8")
_ROOM = 512
"""Ticket bytes ``pack`` makes sure every item has before it shares anything (a handle takes about 300)."""


def _str(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


def encode(h: ipc.Handle) -> bytes:
    """``h`` as bytes (a fixed layout, no pickle: the engine decodes without running anything)."""
    if h.dtype not in _DTYPES:
        raise ValueError(f"handle dtype must be one of {', '.join(_DTYPES)}, got {h.dtype!r}")
    nd = len(h.shape)
    body = (h.mem + h.event + struct.pack("<QQIIIBB", h.offset, h.nbytes_span, h.slot, h.generation, h.producer_pid,
                                          _DTYPES.index(h.dtype), nd)
            + struct.pack(f"<{nd}q{nd}q", *h.shape, *h.stride) + _str(h.device_uuid.encode()) + _str(h.table.encode()))
    return MAGIC + struct.pack("<BH", _VERSION, len(body)) + body


def decode(buf: bytes) -> ipc.Handle:
    """The handle ``encode`` wrote at the start of ``buf``; ValueError when ``buf`` holds no ticket."""
    if bytes(buf[:4]) != MAGIC:
        raise ValueError("not an mmprep ticket (magic bytes missing)")
    version, n = struct.unpack_from("<BH", buf, 4)
    if version != _VERSION:
        raise ValueError(f"mmprep ticket version {version}, this mmprep reads version {_VERSION}")
    b = bytes(buf[7:7 + n])
    mem, event = b[:64], b[64:128]
    offset, span, slot, gen, pid, dt, nd = struct.unpack_from("<QQIIIBB", b, 128)
    at = 128 + struct.calcsize("<QQIIIBB")
    dims = struct.unpack_from(f"<{2 * nd}q", b, at)
    at += 16 * nd
    strs = []
    for _ in range(2):
        (k,) = struct.unpack_from("<H", b, at)
        strs.append(b[at + 2:at + 2 + k].decode())
        at += 2 + k
    return ipc.Handle(mem=mem, offset=offset, device_uuid=strs[0], shape=tuple(dims[:nd]), stride=tuple(dims[nd:]),
                      dtype=_DTYPES[dt], nbytes_span=span, event=event, table=strs[1], slot=slot, generation=gen,
                      producer_pid=pid)


def _rows(grid_thw: torch.Tensor) -> list[int]:
    return [int(x) for x in grid_thw.reshape(-1, 3).prod(-1).tolist()]


def write_tickets(blobs: list[bytes], rows: list[int]) -> torch.Tensor:
    """A (sum(rows), WIDTH) uint8 tensor: item ``i``'s rows start with ``blobs[i]``."""
    out = torch.zeros(sum(rows), WIDTH, dtype=torch.uint8)
    start = 0
    for blob, n in zip(blobs, rows):
        if len(blob) > n * WIDTH:
            raise ValueError(f"an item of {n} rows holds {n * WIDTH} ticket bytes, the handle needs {len(blob)}")
        out[start:start + n].view(-1)[:len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        start += n
    return out


def read_tickets(tickets: torch.Tensor, rows: list[int]) -> list[ipc.Handle]:
    """The handles ``write_tickets`` put in ``tickets`` (on any device), one per item of ``rows``."""
    if sum(rows) != tickets.shape[0]:
        raise ValueError(f"tickets have {tickets.shape[0]} rows, the grids say {sum(rows)}")
    host = tickets.cpu().numpy()
    out, start = [], 0
    for n in rows:
        out.append(decode(host[start:start + n].reshape(-1)))
        start += n
    return out


def is_ticket(t: Any) -> bool:
    """Whether ``t`` (a model input) is a ticket tensor rather than pixels."""
    return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 2 and t.shape[1] == WIDTH
            and t.shape[0] > 0 and bytes(t[0, :4].cpu().numpy()) == MAGIC)


def fields_on_cpu(config: Mapping[str, Any], hf_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's field ``config`` with the fields that hold tickets kept on the host (``keep_on_cpu``).

    Why: the engine reads tickets on the host. One vLLM had moved to the GPU must come back with a device-to-host
    copy, which waits for all the GPU work queued before it: with async scheduling (0.26's default) the engine's
    loop would stall on the previous step once per encoder batch."""
    out = dict(config)
    for key, cfg in config.items():
        if is_ticket(hf_inputs.get(key)) and not cfg.field.keep_on_cpu:
            out[key] = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, keep_on_cpu=True))
    return out


_pending = [0]
_pending_lock = threading.Lock()


def pending_bytes() -> int:
    """Bytes of shared outputs the engine has not yet released (this process)."""
    with _pending_lock:
        return _pending[0]


def _settle(n: int) -> None:
    with _pending_lock:
        _pending[0] -= n


def pack(values: torch.Tensor, grid_thw: torch.Tensor, limit_bytes: int) -> torch.Tensor | None:
    """Share ``values`` (CUDA; one row block per item of ``grid_thw``) and return its tickets; None when the
    outputs waiting for the engine would pass ``limit_bytes`` or an item has too few rows to hold a ticket (the
    caller then sends the pixels themselves)."""
    rows = _rows(grid_thw)
    if sum(rows) != values.shape[0]:
        raise ValueError(f"values have {values.shape[0]} rows, grid_thw says {sum(rows)}")
    if min(rows) * WIDTH < _ROOM:  # an item too small to hold its ticket: send pixels (they are small too)
        return None
    nbytes = values.numel() * values.element_size()
    with _pending_lock:
        if _pending[0] + nbytes > limit_bytes:
            return None
        _pending[0] += nbytes
    weakref.finalize(values, _settle, nbytes)  # the leases hold views of values; the last one gone frees it
    blobs, start = [], 0
    for n in rows:
        blobs.append(encode(ipc.share(values[start:start + n], timeout=OPEN_TIMEOUT_S)))
        start += n
    return write_tickets(blobs, rows)


# ---------------------------------------------------------------- engine side
_drops: "queue.Queue[tuple[torch.cuda.Event, list[torch.Tensor]]]" = queue.Queue()
_dropper: threading.Thread | None = None


def _drop_loop() -> None:
    while True:
        event, tensors = _drops.get()
        event.synchronize()  # a blocking event: sleeps until the copies out of the mappings are done
        del tensors[:]  # closes the mappings: the producer gets its memory back


def _drop_later(tensors: list[torch.Tensor], stream: torch.cuda.Stream) -> None:
    """Release opened tickets once the work now queued on ``stream`` is done, without blocking this thread
    (the engine's loop keeps queueing work)."""
    global _dropper
    if _dropper is None:
        _dropper = threading.Thread(target=_drop_loop, name="mmprep-ticket-release", daemon=True)
        _dropper.start()
    event = torch.cuda.Event(blocking=True)
    event.record(stream)
    _drops.put((event, tensors))


def _check_single_consumer() -> None:
    try:
        from vllm.distributed import parallel_state as ps

        tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pp_group().world_size
    except Exception:  # noqa: BLE001 - no initialized groups (tests): one process
        return
    if tp > 1 or pp > 1:
        raise RuntimeError(f"MMPREP_ENGINE_IPC=1 hands each output to one engine process; this engine runs "
                           f"tensor-parallel {tp}, pipeline-parallel {pp}. Unset MMPREP_ENGINE_IPC.")


def unpack(tickets: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The pixels behind ``tickets`` (one per item of ``grid_thw``), copied onto ``tickets``' device (host tickets:
    the current CUDA device, the one the engine's model runs on)."""
    _check_single_consumer()
    opened: dict[tuple[str, int, int], torch.Tensor] = {}
    parts = []
    try:
        for h in read_tickets(tickets, _rows(grid_thw)):
            key = (h.table, h.slot, h.generation)  # vLLM's memory profile batches one dummy item several times
            if key not in opened:
                opened[key] = ipc.open(h)
            parts.append(opened[key])
    except (ipc.LeaseExpiredError, RuntimeError) as e:
        raise RuntimeError(f"mmprep could not open the processor's output in the engine ({e}). MMPREP_ENGINE_IPC=1 "
                           "needs data-parallel size 1 (the engine sees the API server's GPU) and "
                           "--mm-processor-cache-gb 0") from e
    dev = tickets.device if tickets.is_cuda else torch.device("cuda", torch.cuda.current_device())  # the model's
    out = torch.cat([t.to(dev, non_blocking=True) for t in parts])
    del parts
    _drop_later(list(opened.values()), torch.cuda.current_stream(dev))
    return out


_KEYS = {"_parse_and_validate_image_input": ("pixel_values", "image_grid_thw"),
         "_parse_and_validate_video_input": ("pixel_values_videos", "video_grid_thw")}


def _wrap(fn: Callable[..., Any], key: str, grid_key: str) -> Callable[..., Any]:
    def parse(self: Any, **kwargs: Any) -> Any:
        t = kwargs.get(key)
        if is_ticket(t):
            kwargs[key] = unpack(t, kwargs[grid_key])
        return fn(self, **kwargs)

    parse.__name__, parse.__qualname__, parse.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    parse._mmprep_wrapped = fn  # type: ignore[attr-defined]
    return parse


def install_consumers(models: dict[str, tuple[str, str]]) -> list[str]:
    """Wrap the input parsers of ``models`` (name -> (module, class)) so tickets become pixels (idempotent)."""
    done = []
    for name, (module, cls_name) in models.items():
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            continue
        for meth, (key, grid_key) in _KEYS.items():
            fn = getattr(cls, meth, None)
            if fn is None or hasattr(fn, "_mmprep_wrapped"):
                continue
            setattr(cls, meth, _wrap(fn, key, grid_key))
        done.append(name)
    return done
