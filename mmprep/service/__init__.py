"""Worker processes that decode and preprocess media for the caller (a layer above the core).

``MediaService`` starts workers (two per visible GPU by default, or CPU workers), sends them bytes
through shared memory and returns ``Video`` objects and preprocess outputs whose GPU tensors stay on
the worker's GPU, opened here through ``mmprep.ipc``. ``host.attach()`` gives the same requests
against one service per host, shared by every process. The core never imports this package.
"""

import threading

import torch

from .pool import MediaService, ServiceApi, ServiceBusyError, ServiceError, WorkerCrashedError

__all__ = ["MediaService", "ServiceApi", "ServiceError", "WorkerCrashedError", "ServiceBusyError", "shared",
           "set_shared", "shared_for"]

_lock = threading.Lock()
_shared: list[ServiceApi | None] = []  # [] = not decided yet


def shared() -> ServiceApi | None:
    """The service integrations use (the vLLM plugin's loaders), or None to decode in-process.

    When ``MMPREP_WORKERS`` > 0 (that many workers per GPU; CPU workers without CUDA): with
    ``MMPREP_SERVICE`` set, the host's service (attached, started if none runs: every process shares
    it, e.g. each of vLLM's API servers); else one started for this process. ``set_shared`` overrides."""
    if _shared:
        return _shared[0]
    from ..config import settings

    with _lock:
        if not _shared:
            n, where = settings().workers, settings().service
            if n <= 0:
                _shared.append(None)
            else:
                import torch

                gpu = torch.cuda.is_available()
                if where:
                    from .host import attach, default_address

                    _shared.append(attach(default_address(), workers_per_gpu=n, cpu_workers=0 if gpu else n))
                else:
                    _shared.append(MediaService(workers_per_gpu=n, cpu_workers=0 if gpu else n).start())
    return _shared[0]


def set_shared(service: ServiceApi | None) -> None:
    """Make ``service`` (started) the process-wide one; None: decode in-process. Returns nothing."""
    with _lock:
        _shared[:] = [service]


def shared_for(device: str | torch.device) -> tuple[ServiceApi | None, int | None]:
    """The shared service and the GPU to ask it for (None: its choice), for a request that names ``device``;
    (None, None) when it runs in this process: no service, or ``device="cpu"`` (the caller asked for this process's
    CPU, and a service picks its workers' devices itself). Raises ``ValueError`` for a device that is not one of
    mmprep's choices."""
    from ..device import parse_device

    kind, gpu = parse_device(device)  # gpu: None for "auto" and "cuda"
    if kind == "cpu" or (svc := shared()) is None:
        return None, None
    return svc, gpu
