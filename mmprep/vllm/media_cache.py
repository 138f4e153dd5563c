"""Decoded videos kept for repeats: the same bytes with the same sampling are decoded once.

Chat traffic sends the same clip again and again (several questions about one video, multi-turn
conversations). vLLM's processor cache already skips the HF processor for a repeated item (mmprep's
identity digest makes that lookup cheap), but the loader still decodes every request. With
``MMPREP_MEDIA_CACHE_MB`` > 0 the mmprep loaders keep recent results, least recently used first out,
keyed by a digest of the bytes and every loader option; a hit hands back the same frames (vLLM
never writes into them) and a copy of the metadata. GPU frames in the cache keep their share of the
GPU budget, so with a budget (``--mm-ipc-gpu-memory-gb``) the cache holds at most half of it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..config import settings

__all__ = ["MediaCache", "media_cache"]


def _nbytes(frames: torch.Tensor | np.ndarray) -> int:
    return int(frames.nbytes) if isinstance(frames, np.ndarray) else frames.numel() * frames.element_size()


class MediaCache:
    """Byte-bounded LRU of ``key -> (frames, metadata)``; thread-safe."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[str, tuple[Any, dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _limit(self) -> int:
        from .. import memory

        b = memory.budget()
        gpu_cap = b.total_bytes // 2 if b is not None else self.capacity_bytes
        return min(self.capacity_bytes, gpu_cap)

    def get(self, key: str) -> tuple[Any, dict[str, Any]] | None:
        """The cached (frames, copy of the metadata) for ``key``, or None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return hit[0], dict(hit[1])

    def put(self, key: str, frames: Any, meta: dict[str, Any]) -> None:
        """Keep ``(frames, meta)`` under ``key``, dropping the least recently used beyond the capacity."""
        n = _nbytes(frames)
        limit = self._limit()
        if n > limit:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._items[key] = (frames, dict(meta), n)
            self._bytes += n
            while self._bytes > limit:
                _, (_, _, m) = self._items.popitem(last=False)
                self._bytes -= m

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"items": len(self._items), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_cache: list[MediaCache | None] = []
_lock = threading.Lock()


def media_cache() -> MediaCache | None:
    """The process's cache of decoded videos, or None when ``MMPREP_MEDIA_CACHE_MB`` is 0 (the default)."""
    if not _cache:
        with _lock:
            if not _cache:
                mb = settings().media_cache_mb
                _cache.append(MediaCache(mb << 20) if mb > 0 else None)
    return _cache[0]
