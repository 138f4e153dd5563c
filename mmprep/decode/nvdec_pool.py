"""A pool of NVDEC decoder sessions over every GPU, reused across calls.

Creating a decoder (parser, surfaces) costs milliseconds and GPU memory, so sessions are kept
and handed to the next call with the same codec / bit depth / chroma; a session whose surfaces
are too small for a stream is replaced. The pool never holds more than ``size`` sessions per
GPU (default: one per NVDEC engine) and blocks callers past that. A session that saw an error
is destroyed, never reused, so a bad stream cannot poison the next request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger("mmprep.nvdec")

__all__ = ["nvdec_engines", "Session", "NvdecPool"]

# NVDEC engines per GPU by product name (NVIDIA's Video Encode and Decode support matrix).
_ENGINES = [
    ("H100", 7), ("H200", 7), ("H20", 7), ("H800", 7), ("GH200", 7), ("B200", 7), ("B100", 7),
    ("A100", 5), ("A800", 5), ("A30", 4), ("L40", 3), ("L4", 4), ("L20", 3), ("A10", 2),
    ("A40", 2), ("A16", 4), ("A2", 1), ("T4", 2), ("V100", 1), ("RTX", 1),
]
# Smallest surfaces a session is created with, so that most streams reuse it without regrowth.
MIN_SURFACE = (1920, 1088)


def nvdec_engines(device_name: str) -> int:
    """NVDEC engine count for a GPU product name (2 when the product is not known)."""
    for key, n in _ENGINES:
        if key in device_name:
            return n
    return 2


@dataclass
class Session:
    """One decoder on one GPU, with the CUDA stream its work runs on."""

    gpu: int
    key: tuple
    max_width: int
    max_height: int
    decoder: Any = None
    stream: Any = None
    width: int = 0
    """Size of the last stream decoded (0 before the first)."""
    height: int = 0

    def fits(self, key: tuple, width: int, height: int, exact: bool = False) -> bool:
        if self.key != key:
            return False
        if exact:
            return (self.width, self.height) in ((width, height), (0, 0))
        return width <= self.max_width and height <= self.max_height


class NvdecPool:
    """Thread-safe pool; ``session()`` lends a decoder for one stream."""

    def __init__(self, gpus: list[int], size: dict[int, int], factory: Callable[[Session], Any]) -> None:
        if not gpus:
            raise ValueError("NvdecPool needs at least one GPU")
        self.gpus = list(gpus)
        self.size = dict(size)
        self._factory = factory
        self._cond = threading.Condition()
        self._idle: dict[int, list[Session]] = {g: [] for g in gpus}
        self._live: dict[int, int] = {g: 0 for g in gpus}
        self._busy: dict[int, int] = {g: 0 for g in gpus}
        self.created = 0
        self.peak_live = 0
        self.helpers = 0
        """Sessions lent without waiting (``wait=False``): second decoders of split decodes."""

    def stats(self) -> dict[str, Any]:
        """Live / busy / idle sessions per GPU, total created, the peak ever live at once, helpers lent."""
        with self._cond:
            return {
                "size": dict(self.size),
                "live": dict(self._live),
                "busy": dict(self._busy),
                "idle": {g: len(v) for g, v in self._idle.items()},
                "created": self.created,
                "peak_live": self.peak_live,
                "helpers": self.helpers,
            }

    def _pick(
        self, gpus: list[int], key: tuple, width: int, height: int, exact: bool
    ) -> tuple[str, int, Session | None]:
        by_load = sorted(gpus, key=lambda g: self._busy[g])
        # 1) an idle session that last decoded this very size, then (unless exact) one that fits
        for must_match in (True, False) if not exact else (True,):
            for g in by_load:
                for s in self._idle[g]:
                    if s.fits(key, width, height, exact=must_match):
                        return "reuse", g, s
        # 2) room for a new session
        free = [g for g in gpus if self._live[g] < self.size[g]]
        if free:
            return "new", min(free, key=lambda g: self._busy[g]), None
        # 3) replace an idle session that does not fit
        for g in by_load:
            if self._idle[g]:
                return "replace", g, self._idle[g][0]
        return "wait", -1, None

    def _claim(self, action: str, g: int, s: Session | None) -> Session | None:
        """Take what ``_pick`` chose (under the lock): the idle session to reuse, or None to create one."""
        if s is not None:
            self._idle[g].remove(s)
        if action == "replace":
            self._live[g] -= 1
            s.decoder = None  # release the old session's surfaces before creating the new one
            s = None
        if s is None:
            self._live[g] += 1
            self.peak_live = max(self.peak_live, sum(self._live.values()))
        self._busy[g] += 1
        return s

    @contextmanager
    def session(
        self, key: tuple, width: int, height: int, gpu: int | None = None, exact: bool = False, wait: bool = True
    ) -> Iterator[Session | None]:
        """Borrow a session able to decode a ``width``x``height`` stream of ``key``; blocks when full, or with
        ``wait=False`` yields None at once (a helper session that is only worth having when one is free).

        ``exact`` reuses only a session that last decoded this very size (else a new one)."""
        gpus = self.gpus if gpu is None else [gpu]
        for g in gpus:
            if g not in self.size:
                raise ValueError(f"gpu must be one of {self.gpus}, got {g}")
        with self._cond:
            while (pick := self._pick(gpus, key, width, height, exact))[0] == "wait" and wait:
                self._cond.wait()
            action, g, s = pick
            if action != "wait":
                s = self._claim(action, g, s)
                self.helpers += not wait
        if action == "wait":
            yield None
            return
        ok = False
        try:
            if s is None:
                s = Session(
                    gpu=g, key=key, max_width=max(width, MIN_SURFACE[0]), max_height=max(height, MIN_SURFACE[1])
                )
                self._factory(s)
                with self._cond:
                    self.created += 1
                logger.debug("created NVDEC session %s on GPU %d (%dx%d)", key, g, s.max_width, s.max_height)
            yield s
            s.width, s.height = width, height
            ok = True
        finally:
            with self._cond:
                self._busy[g] -= 1
                if ok:
                    self._idle[g].append(s)
                else:
                    if s is not None:
                        s.decoder = None
                    self._live[g] -= 1
                self._cond.notify_all()
