"""GPU memory budget for decoded media: decodes acquire bytes before allocating and wait for room.

The budget is a byte-counting semaphore per process. mmprep's own comes from
``MMPREP_GPU_MEMORY_GB`` (0 = unlimited); an integration may install another source with
``set_budget_source`` (the vLLM plugin installs vLLM's ``--mm-ipc-gpu-memory-gb`` pool). A lease
is released when the tensor it covers is freed, or at once when the decode fails.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Protocol

import torch

from .config import settings
from .errors import MediaTooLargeError

__all__ = ["Budget", "Lease", "budget", "set_budget_source", "hold_for"]


class Lease(Protocol):
    """What a budget's ``acquire`` returns; ``release`` must be idempotent."""

    def release(self) -> None: ...


class Source(Protocol):
    """Anything with vLLM's pool shape: ``total_bytes`` and a blocking ``acquire(nbytes)``."""

    total_bytes: int

    def acquire(self, nbytes: int) -> Lease: ...


class _Lease:
    __slots__ = ("_budget", "nbytes", "_done")

    def __init__(self, budget: "Budget", nbytes: int) -> None:
        self._budget, self.nbytes, self._done = budget, nbytes, False

    def release(self) -> None:
        with self._budget._cond:
            if self._done:
                return
            self._done = True
            self._budget._available += self.nbytes
            self._budget._cond.notify_all()

    def __enter__(self) -> "_Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refuse_over(nbytes: int, total: int) -> None:
    """A request larger than the whole budget could never be served: refuse it instead of waiting."""
    if nbytes > total:
        raise MediaTooLargeError(
            f"decoded media needs {nbytes} bytes of GPU memory, over the whole budget of "
            f"{total} (MMPREP_GPU_MEMORY_GB or --mm-ipc-gpu-memory-gb)"
        )


class Budget:
    """Blocking byte semaphore: ``acquire`` waits until ``nbytes`` fit, then returns a lease."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"total_bytes must be > 0, got {total_bytes}")
        self.total_bytes = total_bytes
        self._available = total_bytes
        self._cond = threading.Condition()

    @property
    def available_bytes(self) -> int:
        with self._cond:
            return self._available

    def acquire(self, nbytes: int) -> _Lease:
        _refuse_over(nbytes, self.total_bytes)
        with self._cond:
            while self._available < nbytes:
                self._cond.wait()
            self._available -= nbytes
        return _Lease(self, nbytes)


_lock = threading.Lock()
_own: Budget | None = None
_source: Callable[[], Source | None] | None = None


def set_budget_source(source: Callable[[], Source | None] | None) -> None:
    """Take GPU budgets from ``source()`` (called per decode; None there = mmprep's own budget)."""
    global _source
    _source = source


def budget() -> Source | None:
    """The budget decodes acquire from now, or None when GPU memory is not limited."""
    global _own
    if _source is not None and (ext := _source()) is not None:
        return ext
    gb = settings().gpu_memory_gb
    if gb <= 0:
        return None
    with _lock:
        if _own is None:
            _own = Budget(int(gb * (1 << 30)))
        return _own


def acquire(nbytes: int) -> Lease | None:
    """Reserve ``nbytes`` from the current budget (blocking); None when there is no budget."""
    b = budget()
    if b is None or nbytes <= 0:
        return None
    _refuse_over(nbytes, b.total_bytes)  # vLLM's pool would raise a plain ValueError instead
    return b.acquire(nbytes)


def hold_for(tensor: torch.Tensor, lease: Lease | None) -> torch.Tensor:
    """Release ``lease`` when ``tensor`` (and every view of it) is freed."""
    if lease is not None:
        weakref.finalize(tensor, lease.release)
    return tensor
