"""Hand-off of a Qwen2-VL-sized batch (46080x1176 bf16, 108 MB) to another process.

Paths, side by side, each a full round trip (producer hands over, consumer has the tensor on its
GPU, touches it and says so; reclaiming the producer's memory happens in the background): mmprep.ipc (CUDA IPC, lease), torch.multiprocessing's queue (CUDA IPC by refcount, what
vLLM's ``--mm-tensor-ipc torch_shm`` uses), and two trips through host memory: ``host-shm-pageable`` (device->host into pageable shared
memory, host->device in the consumer) and ``host-pinned-copies`` (a device->host and a host->device
copy of the same bytes through pinned memory, in one process: the floor any transport that carries
bytes through the host pays, without the second process's costs).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle

import pytest
import torch

from .util import run_rounds

pytestmark = pytest.mark.gpu
SHAPE = (46080, 1176)


def _consumer(conn, queue, host) -> None:
    import torch

    from mmprep import ipc

    torch.cuda.init()
    dev = torch.empty(SHAPE, dtype=torch.bfloat16, device="cuda")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg == "ipc":
            t = ipc.open(pickle.loads(conn.recv_bytes()))
            t[0, :1].add_(0)  # touch it on the device
            del t
        elif msg == "torch_queue":
            t = queue.get()
            t[0, :1].add_(0)
            del t
        elif msg == "host":
            dev.copy_(host, non_blocking=False)
        torch.cuda.synchronize()
        conn.send(True)


@pytest.fixture(scope="module")
def consumer():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    queue = ctx.Queue()
    host = torch.empty(SHAPE, dtype=torch.bfloat16).share_memory_()
    p = ctx.Process(target=_consumer, args=(child, queue, host), daemon=True)
    p.start()
    yield parent, queue, host
    parent.send(None)
    p.join(10)


@pytest.mark.parametrize("path", ["mmprep-ipc", "torch-mp-queue", "host-shm-pageable", "host-pinned-copies"])
def bench_handoff_46080x1176_bf16(benchmark, consumer, path):
    from mmprep import ipc

    conn, queue, host = consumer
    src = torch.randn(SHAPE, device="cuda").to(torch.bfloat16)
    pinned = torch.empty(SHAPE, dtype=torch.bfloat16, pin_memory=True) if path == "host-pinned-copies" else None
    back = torch.empty_like(src) if pinned is not None else None

    def once():
        if path == "mmprep-ipc":
            h = ipc.share(src)  # the producer reclaims it in the background once released
            conn.send("ipc")
            conn.send_bytes(pickle.dumps(h))
            assert conn.recv()
        elif path == "torch-mp-queue":
            conn.send("torch_queue")
            queue.put(src)
            assert conn.recv()
        elif path == "host-shm-pageable":
            host.copy_(src)  # device -> host (the serialize side)
            conn.send("host")
            assert conn.recv()
        else:
            pinned.copy_(src, non_blocking=True)
            back.copy_(pinned, non_blocking=True)
            torch.cuda.synchronize()

    benchmark.group = "hand-off 46080x1176 bf16 to another process"
    run_rounds(benchmark, once, 1, rounds=20, path=path, mb=src.numel() * 2 / 2**20)
