"""Worker processes that decode and preprocess media for the caller (a layer above the core).

``MediaService`` starts workers (one per visible GPU by default, or CPU workers), sends them bytes
through shared memory and returns ``Video`` objects and preprocess outputs whose GPU tensors stay on
the worker's GPU, opened here through ``mmprep.ipc``. The core never imports this package.
"""

import threading

from .pool import MediaService, ServiceBusyError, ServiceError, WorkerCrashedError

__all__ = ["MediaService", "ServiceError", "WorkerCrashedError", "ServiceBusyError", "shared", "set_shared"]

_lock = threading.Lock()
_shared: list[MediaService | None] = []  # [] = not decided yet


def shared() -> MediaService | None:
    """The process-wide service integrations use (the vLLM plugin's loaders), or None to decode in-process.

    Started on first use when ``MMPREP_WORKERS`` > 0 (that many workers per GPU; CPU workers without CUDA),
    unless ``set_shared`` installed one."""
    if _shared:
        return _shared[0]
    from ..config import settings

    with _lock:
        if not _shared:
            n = settings().workers
            if n <= 0:
                _shared.append(None)
            else:
                import torch

                gpu = torch.cuda.is_available()
                _shared.append(MediaService(workers_per_gpu=n, cpu_workers=0 if gpu else n).start())
    return _shared[0]


def set_shared(service: MediaService | None) -> None:
    """Make ``service`` (started) the process-wide one; None: decode in-process. Returns nothing."""
    with _lock:
        _shared[:] = [service]
