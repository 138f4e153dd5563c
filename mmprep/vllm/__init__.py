"""vLLM integration: a video loader, a media connector and GPU-memory discipline, by env var.

``pip install mmprep[vllm]`` installs the entry point ``vllm.general_plugins: mmprep``; vLLM then
calls ``register()`` in every process at start-up. ``VLLM_VIDEO_LOADER_BACKEND=mmprep`` decodes
video with NVDEC (PyAV on the CPU without a GPU) for every model whose sampling mmprep reproduces,
``VLLM_MEDIA_CONNECTOR=mmprep`` additionally decodes images with nvJPEG. Importing this module
does not import vLLM; ``register()`` does.
"""

from __future__ import annotations

__all__ = ["register", "LOADER_NAME", "CONNECTOR_NAME"]

LOADER_NAME = "mmprep"
CONNECTOR_NAME = "mmprep"


def register() -> None:
    """Entry point: register mmprep's loaders and connector with vLLM (idempotent)."""
    from .plugin import register as _register

    _register()
