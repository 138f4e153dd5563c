"""One media service per host, shared by every process on it (e.g. each of vLLM's API servers).

``attach()`` connects to the host's service and starts it first when none runs (under a file lock,
so concurrent first callers start one). The service is a detached process that runs a
``MediaService`` and listens on a Unix socket: ``MMPREP_SERVICE`` names it ("host": the default
``/tmp/mmprep-service-<uid>.sock``; or a path), a 0600 key file beside the socket authenticates
callers. Start it beside ``vllm serve`` yourself with ``python -m mmprep.service.host``, or let the
first caller start it; one started by a caller exits after ``idle_exit`` seconds without callers.

Bytes go in through POSIX shared memory: the caller copies them into a segment it reuses, and the
worker reads that segment itself (the service process passes its name on, never the bytes). GPU results
come back as ``mmprep.ipc`` handles that the caller opens straight from the worker that made them:
no copy, no trip through the service process, the worker's lease still guarding the memory. CPU
results (CPU workers) come back through a shared-memory segment the caller copies; the service
unlinks it when the caller's next request or disconnection shows it was read.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import torch

from .. import errors
from ..config import settings
from ..source import Source, read_source
from .pool import WORKERS_PER_GPU, MediaService, ServiceApi, ServiceError, _import, keep_mappings_for
from .shm import Arena, Mapped, SharedBytes, from_bytes, to_bytes

__all__ = ["HostClient", "attach", "default_address", "serve"]

logger = logging.getLogger("mmprep")


def default_address() -> str:
    """The host's service socket: ``MMPREP_SERVICE`` when it is a path, else one per user in /tmp."""
    value = settings().service
    return value if value not in ("", "host") else f"/tmp/mmprep-service-{os.getuid()}.sock"


def _key(address: str, create: bool = False) -> bytes:
    path = Path(address + ".key")
    if create and not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


@contextlib.contextmanager
def _file_lock(path: str):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- the service process ------------------------------------------------------------------------------
def _to_shm(t: torch.Tensor) -> tuple[SharedMemory, tuple]:
    """A CPU tensor copied into a new shared-memory segment, and how the caller rebuilds it."""
    flat, shape, dtype = to_bytes(t)
    seg = SharedMemory(create=True, size=max(1, flat.numel()))
    if flat.numel():
        torch.frombuffer(seg.buf, dtype=torch.uint8, count=flat.numel()).copy_(flat)
    return seg, ("shm", seg.name, shape, dtype)


def _unlink(segments: list[SharedMemory]) -> None:
    for seg in segments:
        seg.close()
        seg.unlink()
    segments.clear()


def _serve_connection(conn: Connection, svc: MediaService, clients: list[int], lock: threading.Lock) -> None:
    """Answer one caller's requests, in order, until it disconnects."""
    sent: list[SharedMemory] = []  # result segments of the last answer: read once the caller asks again
    try:
        while True:
            try:
                op, shm, size, options, gpu, timeout, worker = conn.recv()
            except (EOFError, OSError):
                return
            _unlink(sent)
            try:
                if op == "stats":
                    conn.send(("ok", {**svc.stats(), "pid": os.getpid()}))
                    continue
                # the caller's segment goes straight to the worker: this process never touches the bytes
                data = SharedBytes(shm, size) if shm is not None else None
                payload = svc._call(op, data, options, gpu, timeout, worker, opened=False)
                out = {}
                for k, v in payload.items():
                    if isinstance(v, tuple) and len(v) == 2 and v[0] == "cpu":
                        seg, v = _to_shm(v[1])
                        sent.append(seg)
                    out[k] = v
                conn.send(("ok", out))
            except errors.MediaError as e:
                conn.send(("media_error", type(e).__name__, str(e)))
            except ServiceError as e:
                conn.send(("service_error", type(e).__name__, str(e)))
            except Exception as e:  # noqa: BLE001 - the caller gets it, the service lives on
                conn.send(("error", type(e).__name__, str(e)))
    finally:
        _unlink(sent)
        conn.close()
        with lock:
            clients[0] -= 1
            clients[1] = time.monotonic()


def serve(address: str | None = None, *, idle_exit: float = 0.0, **service_kwargs: Any) -> None:
    """Run the host's service in this process until SIGTERM/SIGINT (or ``idle_exit`` s without callers)."""
    address = address or default_address()
    key = _key(address, create=True)
    with MediaService(**service_kwargs) as svc:  # workers warm before the socket accepts anyone
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # a stale socket of a service that died
        listener = Listener(address, family="AF_UNIX", authkey=key)
        os.chmod(address, 0o600)
        clients, lock, stop = [0, time.monotonic()], threading.Lock(), threading.Event()

        def on_signal(*_: object) -> None:
            stop.set()
            listener.close()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn = listener.accept()
                except Exception:  # noqa: BLE001 - closed, or a caller with the wrong key
                    if stop.is_set():
                        return
                    continue
                with lock:
                    clients[0] += 1
                threading.Thread(target=_serve_connection, args=(conn, svc, clients, lock), daemon=True).start()

        threading.Thread(target=accept, name="mmprep-host-accept", daemon=True).start()
        logger.info("mmprep host service on %s: %s", address, svc.stats())
        while not stop.wait(1.0):
            with lock:
                idle = clients[0] == 0 and time.monotonic() - clients[1] > idle_exit
            if idle_exit > 0 and idle:
                break
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)


# -- callers -------------------------------------------------------------------------------------------
class HostClient(ServiceApi):
    """The host's service as seen from one process: the ``MediaService`` request methods, thread-safe
    (one connection per calling thread). Get one with ``attach()``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._local = threading.local()
        self._arena = Arena()
        weakref.finalize(self, self._arena.trim)  # also at exit: no idle segment outlives the process

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Client(self.address, family="AF_UNIX", authkey=_key(self.address))
            except AuthenticationError as e:
                raise ServiceError(f"the mmprep service at {self.address} refused this process: its key "
                                   f"({self.address}.key) does not match") from e
            except (OSError, EOFError) as e:
                raise ServiceError(f"no mmprep service answers at {self.address} ({type(e).__name__}: {e})") from e
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def alive(self) -> bool:
        """Whether a service answers at the address (connects this thread when it does)."""
        try:
            self.stats()
            return True
        except ServiceError:
            return False

    def stats(self) -> dict[str, Any]:
        """The service's worker stats, plus the service process's ``pid``."""
        return self._call("stats", None, {}, None, None)

    def close(self) -> None:
        """Disconnect this thread (other threads' connections close with their threads or the process) and
        unlink the idle input segments."""
        self._drop()
        self._arena.trim()

    def _call(self, op: str, source: Source | None, options: dict[str, Any], gpu: int | None,
              timeout: float | None, worker: int | None = None) -> dict[str, Any]:
        lent = self._arena.put(read_source(source, max_bytes=settings().max_bytes)) if source is not None else None
        reply = None
        try:
            conn = self._conn()
            try:
                conn.send((op, lent.name if lent else None, lent.size if lent else 0, options, gpu, timeout, worker))
                if timeout is not None and not conn.poll(timeout + 5.0):
                    self._drop()  # its answer would arrive out of turn
                    raise ServiceError(f"{op} took longer than timeout={timeout} s at the host service")
                reply = conn.recv()
            except (EOFError, OSError) as e:
                self._drop()
                raise ServiceError(f"the mmprep service at {self.address} went away ({type(e).__name__})") from e
        finally:
            if lent is not None:  # a worker's answer: it is done with the bytes; else (a timeout at the service or
                # here, the service gone) a worker may still read them in place: not lent again
                self._arena.give_back(lent, reuse=reply is not None and reply[0] in ("ok", "media_error", "error"))
        status = reply[0]
        if status == "ok":
            return {k: _open(v) for k, v in reply[1].items()} if op != "stats" else reply[1]
        cls_name, message = reply[1], reply[2]
        if status == "media_error":
            raise getattr(errors, cls_name, errors.MediaError)(message)
        if status == "service_error":
            from . import pool

            raise getattr(pool, cls_name, ServiceError)(message)
        raise ServiceError(f"the host service failed: {cls_name}: {message}")


def _open(value: Any) -> Any:
    """A result value as a tensor of this process: GPU memory opened by CUDA IPC, or a shared-memory copy."""
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "shm":
        _, name, shape, dtype = value
        seg = Mapped(name)
        try:
            return from_bytes(seg.buf, shape, dtype)
        finally:
            seg.close()
    return _import(value)  # GPU handles opened as the local pool opens them


def attach(address: str | None = None, *, start: bool = True, start_timeout: float = 300.0,
           idle_exit: float = 60.0, **service_kwargs: Any) -> HostClient:
    """The host's service at ``address`` (default ``default_address()``), started first when none
    answers and ``start`` is true (``service_kwargs`` go to its ``MediaService``)."""
    address = address or default_address()
    client = HostClient(address)
    try:
        stats = client.stats()
    except ServiceError as e:
        if not start or isinstance(e.__cause__, AuthenticationError):  # never start a second one over it
            raise ServiceError(f"{e}; start one with python -m mmprep.service.host") from e
        stats = _start(client, address, start_timeout, idle_exit, service_kwargs)
    keep_mappings_for(w["device"] for w in stats["workers"])  # GPU results come straight from the workers
    return client


def _start(client: HostClient, address: str, start_timeout: float, idle_exit: float,
           service_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Start the host's service at ``address`` unless another process just did; its stats once it answers."""
    with _file_lock(address + ".lock"):
        if client.alive():  # another process started it while we waited for the lock
            return client.stats()
        _key(address, create=True)
        cmd = [sys.executable, "-m", "mmprep.service.host", "--address", address, "--idle-exit", str(idle_exit)]
        for k, v in service_kwargs.items():
            cmd += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
        with open(address + ".log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + start_timeout
        while not client.alive():
            if proc.poll() is not None:
                raise ServiceError(f"the mmprep service exited with {proc.returncode} while starting; see {address}.log")
            if time.monotonic() > deadline:
                proc.kill()
                raise ServiceError(f"the mmprep service did not start within {start_timeout} s; see {address}.log")
            time.sleep(0.1)
    return client.stats()


def parse_gpus(text: str | None) -> list[int] | None:
    """``--gpus`` as ``MediaService`` takes it: None (not given: every visible GPU), "" (none: CPU workers only, what
    ``attach(gpus=[])`` passes) or comma-separated ordinals."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--gpus must be comma-separated GPU ordinals (e.g. 0,1) or empty, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmprep.service.host", description="Run the host's mmprep service.")
    ap.add_argument("--address", default=None, help="Unix socket path (default: MMPREP_SERVICE or /tmp/...)")
    ap.add_argument("--gpus", default=None, help="GPU ordinals, e.g. 0,1 (default: every visible GPU; \"\": none, CPU workers only)")
    ap.add_argument("--workers-per-gpu", type=int, default=WORKERS_PER_GPU)
    ap.add_argument("--cpu-workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--queue-depth", type=int, default=16)
    ap.add_argument("--idle-exit", type=float, default=0.0, help="exit after this many seconds without callers (0: never)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(a.address, idle_exit=a.idle_exit, gpus=parse_gpus(a.gpus), workers_per_gpu=a.workers_per_gpu,
          cpu_workers=a.cpu_workers, threads=a.threads, queue_depth=a.queue_depth)


if __name__ == "__main__":
    main()
