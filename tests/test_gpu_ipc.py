"""mmprep.ipc between two real processes on the GPU: zero-copy, leases, crash reclaim."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import time

import pytest
import torch

import mmprep
from mmprep import ipc

from .helpers import clip, report

pytestmark = pytest.mark.gpu


def _consumer(conn) -> None:
    """Child: open each handle it is sent, report checksum and its own allocator use, then obey."""
    import torch

    from mmprep import ipc

    torch.cuda.init()
    while True:
        msg = conn.recv()
        if msg is None:
            return
        cmd, blob = msg
        if cmd == "stats":
            conn.send(("stats", ipc.consumer_stats()))
            continue
        handle = pickle.loads(blob)
        base = torch.cuda.memory_allocated()
        try:
            t = ipc.open(handle)
        except ipc.LeaseExpiredError as e:
            conn.send(("expired", str(e)))
            continue
        except Exception as e:  # report, so the parent fails with the cause
            conn.send(("error", repr(e)))
            continue
        checksum = float(t.double().sum().item()) if t.dtype != torch.uint8 else float(t.sum(dtype=torch.int64).item())
        first = t.flatten()[:8].float().tolist()
        allocated_while_open = torch.cuda.memory_allocated() - base
        if cmd == "hang":  # hold it and wait to be killed
            conn.send(("opened", checksum, first, allocated_while_open, t.is_contiguous()))
            time.sleep(600)
        del t
        torch.cuda.synchronize()
        conn.send(("done", checksum, first, allocated_while_open))


@pytest.fixture
def consumer():
    ctx = mp.get_context("spawn")  # fork after CUDA/torch threads is unsafe
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_consumer, args=(child,), daemon=True)
    proc.start()
    yield proc, parent
    if proc.is_alive():
        try:
            parent.send(None)
        except Exception:
            pass
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def recv(conn, timeout: float = 60.0):
    """The child's next message; fails (instead of hanging) when it died or went silent."""
    if not conn.poll(timeout):
        raise AssertionError(f"consumer sent nothing within {timeout} s (crashed or hung)")
    return conn.recv()


def _checksum(t: torch.Tensor) -> float:
    return float(t.double().sum().item()) if t.dtype != torch.uint8 else float(t.sum(dtype=torch.int64).item())


def test_decoded_and_transformed_tensor_crosses_processes(consumer):
    proc, conn = consumer
    data = clip("h264", width=640, height=360, frames=48)
    run = lambda: mmprep.preprocess(  # noqa: E731
        videos=[mmprep.decode_video(data, num_frames=8, device="cuda")], dtype=torch.bfloat16, device="cuda")
    run()  # preprocess keeps small per-device constants (norm vectors, resize weights) cached
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    video = mmprep.decode_video(data, num_frames=8, device="cuda")
    out = mmprep.preprocess(videos=[video], profile="qwen2_vl", dtype=torch.bfloat16, device="cuda")
    pv = out["pixel_values_videos"]
    assert pv.is_cuda and pv.dtype == torch.bfloat16
    want, want_first = _checksum(pv), pv.flatten()[:8].float().tolist()
    h = ipc.share(pv, timeout=30)
    blob = pickle.dumps(h)
    del video, out, pv  # the lease alone keeps the memory now
    held = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    conn.send(("use", blob))
    status, *rest = recv(conn)
    assert status == "done", rest
    got, got_first, consumer_alloc = rest
    assert ipc.wait_released(h, timeout=5)
    report("ipc_two_process", bytes_handle=len(blob), checksum_equal=got == want,
           consumer_allocated=consumer_alloc, roundtrip_ms=(time.perf_counter() - t0) * 1e3)
    assert got == want and got_first == want_first
    assert consumer_alloc == 0  # mapped, not copied: no allocation in the consumer
    assert len(blob) < 1024
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() < held and torch.cuda.memory_allocated() == base
    assert ipc.outstanding() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_views_and_dtypes(consumer, dtype):
    proc, conn = consumer
    big = (torch.arange(6 * 7 * 5, device="cuda") % 251).to(dtype).reshape(6, 7, 5)
    view = big[1:5, ::2].transpose(0, 1)  # offset, strided, non-contiguous
    h = ipc.share(view)
    conn.send(("use", pickle.dumps(h)))
    status, *rest = recv(conn)
    assert status == "done", rest
    got, got_first, _ = rest
    assert got == _checksum(view) and got_first == view.flatten()[:8].float().tolist()
    assert ipc.wait_released(h, timeout=5)


def test_killed_consumer_is_reclaimed(consumer):
    proc, conn = consumer
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    t = torch.randn(46080, 1176, device="cuda").to(torch.bfloat16)
    h = ipc.share(t, timeout=60)
    del t
    held = torch.cuda.memory_allocated()
    assert held - base >= 46080 * 1176 * 2
    conn.send(("hang", pickle.dumps(h)))
    status, *rest = recv(conn)
    assert status == "opened", rest
    os.kill(proc.pid, signal.SIGKILL)
    t0 = time.perf_counter()
    assert ipc.wait_released(h, timeout=10)
    reclaim_s = time.perf_counter() - t0
    torch.cuda.synchronize()
    report("ipc_killed_consumer", reclaim_s=reclaim_s, held_mb=(held - base) / 2**20)
    assert torch.cuda.memory_allocated() == base
    assert reclaim_s < 2.0  # far inside the 60 s timeout: the dead pid is noticed


def test_unopened_handle_times_out_and_then_refuses(consumer):
    proc, conn = consumer
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    t = torch.ones(1 << 20, device="cuda")
    h = ipc.share(t, timeout=0.3)
    del t
    assert ipc.wait_released(h, timeout=5)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == base
    conn.send(("use", pickle.dumps(h)))
    status, msg = recv(conn)
    assert status == "expired" and "lease" in msg


def test_share_rejects_cpu_and_bad_args():
    with pytest.raises(ValueError, match="CUDA"):
        ipc.share(torch.ones(3))
    with pytest.raises(ValueError, match="timeout"):
        ipc.share(torch.ones(3, device="cuda"), timeout=0)
    with pytest.raises(ValueError, match="empty"):
        ipc.share(torch.ones(0, device="cuda"))


def test_gpu_memory_budget_blocks_and_releases():
    """MMPREP_GPU_MEMORY_GB-style budget: frames hold bytes while alive, a decode waits for room."""
    import threading

    from mmprep import memory

    data = clip("h264", width=640, height=360, frames=48)
    one = 8 * 640 * 360 * 3
    b = memory.Budget(int(one * 1.5))
    memory.set_budget_source(lambda: b)
    try:
        v1 = mmprep.decode_video(data, num_frames=8, device="cuda")
        assert b.available_bytes == b.total_bytes - one
        got = []
        th = threading.Thread(target=lambda: got.append(mmprep.decode_video(data, num_frames=8, device="cuda")))
        th.start()
        time.sleep(0.5)
        assert th.is_alive() and not got  # blocked: no room for a second clip
        del v1
        th.join(10)
        assert got and b.available_bytes == b.total_bytes - one
        got.clear()
        assert b.available_bytes == b.total_bytes
        with pytest.raises(mmprep.MediaTooLargeError, match="budget"):
            mmprep.decode_video(data, num_frames=16, device="cuda")
        assert b.available_bytes == b.total_bytes
        # The container is intact (the probe passes, the budget is acquired), the payload zeroed: the
        # failure comes from inside NVDEC, after the acquire.
        from mmprep.probe import probe

        from .hostile import payload_zeroed

        broken = payload_zeroed(data)
        probe(broken, max_pixels=1 << 30)
        with pytest.raises(mmprep.CorruptMediaError):
            mmprep.decode_video(broken, num_frames=8, device="cuda")
        assert b.available_bytes == b.total_bytes  # released on error
    finally:
        memory.set_budget_source(None)


def test_reopening_the_same_memory_reuses_the_mapping(consumer):
    """Second hand-off of the same buffer: the consumer's cached mapping and opened event serve it, and it still
    waits for the producer's latest write (queued behind ~50 ms of GPU sleep, so a stale wait reads the old value)."""
    proc, conn = consumer
    buf = torch.zeros(1 << 16, device="cuda")
    for value in (1.0, 2.0, 3.0):
        torch.cuda._sleep(100_000_000)
        buf.fill_(value)
        h = ipc.share(buf)
        conn.send(("use", pickle.dumps(h)))
        status, *rest = recv(conn)
        assert status == "done", rest
        assert rest[0] == value * buf.numel()
        assert ipc.wait_released(h, timeout=5)
    conn.send(("stats", None))
    status, counts = recv(conn)
    # one cuIpcOpenMemHandle and one event opened for three hand-offs
    assert counts == {"opened": 3, "mapped": 1, "unmapped": 0, "events": 1}, counts


def test_wait_idle_returns_after_the_streams_work():
    """``device.wait_idle`` (a sleeping wait, used instead of ``stream.synchronize()``) waits for queued work."""
    from mmprep.device import wait_idle

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued behind the call
        done = torch.cuda.Event()
        done.record(s)
    assert not done.query()
    wait_idle(s)
    assert done.query()
