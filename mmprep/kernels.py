"""Loads the fused CUDA kernels in ``csrc/`` (built just-in-time with nvcc, cached on disk).

Where CUDA, nvcc or a compiler is missing, or ``MMPREP_KERNELS=0``, ``fused()`` returns None and
callers use the pure-torch path, which is also the reference the kernels are tested against.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

from .config import settings

logger = logging.getLogger("mmprep.kernels")

__all__ = ["fused", "csrc_dir"]

_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}


def csrc_dir() -> Path:
    """Kernel sources: ``mmprep/csrc`` in an installed wheel, ``csrc/`` beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "csrc", here.parent / "csrc"):
        if (cand / "bindings.cpp").exists():
            return cand
    raise FileNotFoundError(f"mmprep kernel sources not found beside {here}")


_NAME = "mmprep_kernels_v5"
_SOURCES = ("bindings.cpp", "nv12_to_rgb.cu", "preprocess.cu")
_builder: threading.Thread | None = None


def _build() -> None:
    mod = None
    try:
        from torch.utils.cpp_extension import CUDA_HOME, load

        if CUDA_HOME is None:
            raise RuntimeError("nvcc not found (CUDA_HOME unset)")
        mod = load(
            name=_NAME,
            sources=[str(csrc_dir() / name) for name in _SOURCES],
            extra_cuda_cflags=["-O3"],
            verbose=bool(os.environ.get("MMPREP_KERNELS_VERBOSE")),
        )
        logger.debug("mmprep fused kernels ready: %s", mod.__file__)
    except Exception as e:  # no compiler, no headers, build error: fall back to torch
        logger.warning("mmprep fused kernels unavailable, using the torch path: %s", e)
    with _lock:
        _loaded[_NAME] = mod


def fused(wait: bool = False) -> ModuleType | None:
    """The compiled kernel module, or None while it builds or where it cannot be built.

    The first call starts the build in a background thread (about a minute with nvcc the first
    time on a machine, cached on disk after) and returns None at once, so callers take the torch
    path meanwhile; ``wait=True`` blocks until the build has finished.
    """
    global _builder
    with _lock:
        if _NAME in _loaded:
            return _loaded[_NAME]
        if not (settings().kernels and torch.cuda.is_available()):
            _loaded[_NAME] = None
            return None
        if _builder is None:
            _builder = threading.Thread(target=_build, name="mmprep-kernel-build", daemon=True)
            _builder.start()
        builder = _builder
    if wait:
        builder.join()
        return _loaded.get(_NAME)
    return None


PATCHES, NCHW = 0, 1
"""``layout`` of ``preprocess``: Qwen's flattened patches, or (N,3,H,W) with an optional crop."""


def preprocess(kern: ModuleType, frames: torch.Tensor, out: torch.Tensor, *, height: int, width: int, layout: int,
               norm_mode: int, mean: torch.Tensor, std: torch.Tensor, rescale: float,
               weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], patch: int = 1, merge: int = 1,
               temporal: int = 1, crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
    """The fused resize -> round -> rescale/normalize -> layout kernel of ``kern`` (from ``fused()``), by
    keyword: uint8 (T,3,H,W) ``frames`` resized to ``height`` x ``width`` into ``out``. ``crop`` is
    (top, left, height, width) for ``NCHW`` (zeros: none); ``weights`` = (wx, xspan, wy, yspan)."""
    top, left, crop_h, crop_w = crop
    kern.preprocess(frames, out, height, width, layout, patch, merge, temporal, top, left, crop_h, crop_w,
                    norm_mode, mean, std, rescale, *weights)
