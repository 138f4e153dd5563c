"""Worker processes that decode and preprocess media for the caller (a layer above the core).

``MediaService`` starts workers (one per visible GPU by default, or CPU workers), sends them bytes
through shared memory and returns ``Video`` objects and preprocess outputs whose GPU tensors stay on
the worker's GPU, opened here through ``mmprep.ipc``. The core never imports this package.
"""

from .pool import MediaService, ServiceBusyError, ServiceError, WorkerCrashedError

__all__ = ["MediaService", "ServiceError", "WorkerCrashedError", "ServiceBusyError"]
