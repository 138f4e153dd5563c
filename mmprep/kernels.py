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
        if (cand / "nv12_to_rgb.cu").exists():
            return cand
    raise FileNotFoundError(f"mmprep kernel sources not found beside {here}")


def fused() -> ModuleType | None:
    """The compiled kernel module, building it on first call; None where it cannot be built."""
    name = "mmprep_kernels_v1"
    with _lock:
        if name in _loaded:
            return _loaded[name]
        mod = None
        if settings().kernels and torch.cuda.is_available():
            try:
                from torch.utils.cpp_extension import CUDA_HOME, load

                if CUDA_HOME is None:
                    raise RuntimeError("nvcc not found (CUDA_HOME unset)")
                src = csrc_dir()
                mod = load(
                    name=name,
                    sources=[str(src / "nv12_to_rgb.cu")],
                    extra_cuda_cflags=["-O3"],
                    verbose=bool(os.environ.get("MMPREP_KERNELS_VERBOSE")),
                )
            except Exception as e:  # no compiler, no headers, build error: fall back to torch
                logger.warning("mmprep fused kernels unavailable, using the torch path: %s", e)
                mod = None
        _loaded[name] = mod
        return mod
