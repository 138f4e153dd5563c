"""The media service on CPU workers: same results as in-process calls, errors, crashes, hangs, backpressure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import mmprep
from mmprep.service import MediaService, ServiceBusyError, WorkerCrashedError

from .helpers import clip


@pytest.fixture(scope="module")
def service():
    with MediaService(gpus=[], cpu_workers=2, hang_timeout=30) as s:
        yield s


def test_results_equal_in_process_calls(service):
    data = clip("h264", frames=24)
    v = service.decode_video(data, num_frames=5)
    ref = mmprep.decode_video(data, num_frames=5, device="cpu")
    assert torch.equal(v.frames, ref.frames) and v.indices == ref.indices and v.timestamps == ref.timestamps
    assert v.vllm_metadata() == ref.vllm_metadata()
    assert v.frames.is_shared()  # came back through shared memory, not a pickle of the pixels
    out = service.preprocess_video(data, decode={"num_frames": 4}, profile="qwen2_vl", dtype=torch.bfloat16)
    want = mmprep.preprocess(videos=[mmprep.decode_video(data, num_frames=4, device="cpu")], device="cpu",
                             profile="qwen2_vl", dtype=torch.bfloat16)
    assert out.keys() == want.keys() and all(torch.equal(out[k], want[k]) for k in want)


def test_images_decode_in_a_worker(service):
    from .images import jpeg

    data = jpeg(203, 317)
    img = service.decode_image(data)
    assert torch.equal(img, mmprep.decode_images([data], device="cpu")[0])
    with pytest.raises(mmprep.MediaTooLargeError):  # the same checks, the same errors
        service.decode_image(data, max_pixels=100)


def test_stats_count_the_time_workers_spend_on_requests(service):
    before = service.stats()["workers"][0]
    t0 = time.perf_counter()
    service.ping(delay=0.2, worker=0)
    wall = time.perf_counter() - t0
    after = service.stats()["workers"][0]
    assert after["served"] == before["served"] + 1
    assert 0.2 <= after["busy_s"] - before["busy_s"] <= wall  # the worker's share of the caller's wall time
    assert after["export_s"] - before["export_s"] < 0.01  # a ping's answer has no tensors to hand out
    total = lambda key: sum(w[key] for w in service.stats()["workers"])  # noqa: E731
    keys = ("busy_s", "read_s", "decode_s", "export_s")
    busy, read, decoded, exported = (total(k) for k in keys)
    here = service.stats()
    t0 = time.perf_counter()
    service.decode_video(clip("h264", frames=24), num_frames=4)  # frames leave through shared memory
    wall = time.perf_counter() - t0
    d_busy, d_read, d_decode, d_export = (total(k) - v for k, v in zip(keys, (busy, read, decoded, exported)))
    assert d_read == 0 and 0 < d_decode and 0 < d_export  # a video is read in place: no copy to count ...
    assert d_decode + d_export < d_busy  # ... and the phases are parts of the worker's time on it
    d_input, d_open = (service.stats()[k] - here[k] for k in ("caller_input_s", "caller_open_s"))
    assert 0 < d_input and 0 < d_open and d_input + d_open + d_busy < wall  # the caller's own share, beside it
    read = total("read_s")
    from .images import jpeg

    service.decode_image(jpeg(64, 48))  # an image is copied out of shared memory
    assert total("read_s") > read


def test_bad_media_raise_the_same_error_and_the_worker_lives(service):
    pids = [w["pid"] for w in service.stats()["workers"]]
    for _ in range(4):
        with pytest.raises(mmprep.CorruptMediaError, match="not a readable media container"):
            service.decode_video(b"not a video" * 100)
        with pytest.raises(mmprep.EmptyMediaError):
            service.decode_video(b"")
    assert [w["pid"] for w in service.stats()["workers"]] == pids
    assert service.decode_video(clip("h264", frames=24), num_frames=2).frames.shape[0] == 2


def test_many_threads_share_the_service(service):
    data = clip("h264", frames=24)
    ref = mmprep.decode_video(data, num_frames=3, device="cpu").frames
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(torch.equal(service.decode_video(data, num_frames=3).frames, ref))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and results == [True] * 36
    assert all(w["inflight"] == 0 for w in service.stats()["workers"])


def test_killed_worker_fails_only_its_requests_and_is_replaced(service):
    victim = service.stats()["workers"][0]
    got: list = []
    t = threading.Thread(target=lambda: got.append(_catch(lambda: service.ping(delay=10, worker=0))))
    t.start()
    time.sleep(0.5)
    other = service.ping(worker=1)  # the other worker keeps serving
    os.kill(victim["pid"], signal.SIGKILL)
    t.join(30)
    assert other >= 1 and isinstance(got[0], WorkerCrashedError) and "died" in str(got[0])
    after = service.stats()["workers"][0]
    assert after["pid"] != victim["pid"] and after["restarts"] == victim["restarts"] + 1
    assert service.ping(worker=0) >= 1  # the replacement serves
    assert service.decode_video(clip("h264", frames=24), num_frames=2).frames.shape[0] == 2


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited with all its threads (its leader turns zombie before the other threads let go
    of the open files)."""
    from mmprep.ipc import _alive  # a zombie counts as gone there

    try:
        return not _alive(pid) and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def test_a_request_sent_to_a_worker_that_just_died_waits_for_its_replacement():
    """Killed, then asked at once (before the service noticed): the request never reached the dead worker, so it goes
    to the replacement instead of failing."""
    with MediaService(gpus=[], cpu_workers=1) as s:
        for round_ in range(5):
            pid = s.stats()["workers"][0]["pid"]
            os.kill(pid, signal.SIGKILL)
            while not _exited(pid):
                time.sleep(0.0005)
            assert s.ping() >= 1
            assert s.stats()["workers"][0]["restarts"] == round_ + 1


def test_hung_worker_is_killed_and_replaced():
    with MediaService(gpus=[], cpu_workers=1, hang_timeout=1.0) as s:
        pid = s.stats()["workers"][0]["pid"]
        with pytest.raises(WorkerCrashedError, match="hung"):
            s.ping(delay=30)
        assert s.stats()["workers"][0]["pid"] != pid and s.ping() >= 1


def test_full_queues_push_back_with_a_clear_error():
    with MediaService(gpus=[], cpu_workers=1, queue_depth=1, submit_timeout=0.3) as s:
        t = threading.Thread(target=lambda: s.ping(delay=2))
        t.start()
        time.sleep(0.3)
        with pytest.raises(ServiceBusyError, match="queue_depth=1"):
            s.ping()
        t.join()
        assert s.ping() >= 1


def test_a_worker_runs_requests_side_by_side():
    """A worker runs up to ``threads`` requests at once (one at a time left NVDEC's engines idle)."""
    with MediaService(gpus=[], cpu_workers=1, threads=3) as s:
        seen: list[int] = []
        ts = [threading.Thread(target=lambda: seen.append(s.ping(delay=1.0))) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert max(seen) == 3
    with MediaService(gpus=[], cpu_workers=1, threads=1) as s:
        seen = []
        ts = [threading.Thread(target=lambda: seen.append(s.ping(delay=0.3))) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert seen == [1, 1]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="at least one worker"):
        MediaService(gpus=[], cpu_workers=0)
    with pytest.raises(ValueError, match="workers_per_gpu"):
        MediaService(workers_per_gpu=0, cpu_workers=1)
    with pytest.raises(ValueError, match="threads"):
        MediaService(threads=0, cpu_workers=1)
    s = MediaService(gpus=[], cpu_workers=1)
    with pytest.raises(mmprep.service.ServiceError, match="not started"):
        s.ping()


def test_device_is_the_services_choice(service):
    with pytest.raises(ValueError, match="device is chosen by the service"):
        service.decode_video(clip("h264", frames=24), device="cpu")


def test_core_never_imports_the_service():
    code = "import sys, mmprep; mmprep.decode_video; print('mmprep.service' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _segments() -> list[str]:
    """Shared-memory segments, not counting the queues' semaphores (they come and go with workers)."""
    return sorted(n for n in os.listdir("/dev/shm") if not n.startswith("sem."))


def _catch(fn):
    try:
        return fn()
    except BaseException as e:  # noqa: BLE001
        return e


def test_no_shared_memory_or_descriptor_left_behind(service):
    """Inputs and results travel through shared memory: after the results are freed, nothing stays open."""
    import gc

    data = clip("h264", frames=24)
    service.decode_video(data, num_frames=2)  # warm
    gc.collect()
    before = len(os.listdir("/proc/self/fd")), _segments()
    for _ in range(30):
        v = service.decode_video(data, num_frames=4)
        del v
        with pytest.raises(mmprep.MediaError):
            service.decode_video(data[: len(data) // 3])
    gc.collect()
    time.sleep(0.2)
    fds, shm = len(os.listdir("/proc/self/fd")), _segments()
    assert fds <= before[0] and shm == before[1]  # 60 requests: a leak per request would show as +30 or more


def test_a_worker_that_keeps_dying_while_starting_is_a_clear_error(tmp_path):
    """A script without the ``__main__`` guard makes every spawned worker die while starting: start() says
    so after a few tries instead of restarting it until ``start_timeout``."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text("from mmprep.service import MediaService\n"
                      "svc = MediaService(gpus=[], cpu_workers=1, start_timeout=120).start()\n")
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert run.returncode != 0 and time.monotonic() - t0 < 100
    assert "died 3 times while starting" in run.stderr and '__name__ == "__main__"' in run.stderr


def test_a_request_given_up_on_does_not_lend_its_input_segment_again(service):
    """Workers read videos in place: after a timeout the worker may still be reading, so the caller unlinks that
    segment instead of putting the next request's bytes into it."""
    data = clip("h264", frames=48)
    service._arena.trim()  # no idle segment: the request below gets a new one
    before = set(_segments())
    with pytest.raises(mmprep.service.ServiceError, match="timeout"):
        service.decode_video(data, num_frames=8, timeout=0.001)
    assert set(_segments()) - before == set()  # its segment is gone, not kept for the next request
    got = service.decode_video(data, num_frames=8)  # the worker finished (or drops) the first; the next is whole
    assert torch.equal(got.frames, mmprep.decode_video(data, num_frames=8, device="cpu").frames)


def test_gpu_workers_size_the_callers_mapping_cache():
    """Results of many GPU workers: the caller keeps IDLE_MAPPINGS_PER_WORKER mappings open per worker, never fewer
    than before (CPU workers leave it as it is)."""
    from mmprep import ipc
    from mmprep.service.pool import IDLE_MAPPINGS_PER_WORKER, keep_mappings_for

    floor = ipc._idle_floor[0]
    keep_mappings_for(["cpu", "cpu"])
    assert ipc._idle_floor[0] == floor
    keep_mappings_for([f"cuda:{i // 2}" for i in range(8)] + ["cpu"])
    assert ipc._idle_floor[0] == max(floor, 8 * IDLE_MAPPINGS_PER_WORKER)
    keep_mappings_for(["cuda:0"])  # a smaller service later: what a larger one asked for stays
    assert ipc._idle_floor[0] == max(floor, 8 * IDLE_MAPPINGS_PER_WORKER)
    with pytest.raises(ValueError, match="n must be >= 0"):
        ipc.keep_idle_mappings(-1)


_HEAP_PROBE = """
import ctypes, resource, sys
from mmprep.service.worker import keep_heap
if sys.argv[1] != "0" and not keep_heap(int(sys.argv[1])):
    print("unsupported"); sys.exit()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
for _ in range(4):  # a request's host buffers: 1600 blocks of 64 KiB (100 MiB), written, then all freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(64 << 10) for _ in range(1600)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    for b in blocks:
        libc.free(b)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(min(faults[1:]))
"""


def test_workers_keep_freed_host_memory_for_the_next_request():
    """What made a worker's H.264 decode ~25 ms slower than an in-process one (H200, 2026-11-29): glibc handed each
    request's freed buffers back to the kernel and the next request faulted them in again. ``keep_heap`` (each
    worker's first step) keeps them: the same allocations fault in (almost) no pages after the first time."""
    def faults(mb):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, str(mb)], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    kept = faults(256)
    if kept == "unsupported":
        pytest.skip("not glibc: keep_heap has nothing to tune")
    default = int(faults(0))
    assert default > 10_000, default  # glibc's default trims the freed 100 MiB: ~25,600 pages back each time
    assert int(kept) < default // 20, (kept, default)


def test_worker_heap_setting_is_checked(monkeypatch, fresh_settings):
    from mmprep.config import settings
    from mmprep.service.worker import keep_heap

    assert keep_heap(0) is False  # 0: glibc's defaults, nothing applied
    monkeypatch.setenv("MMPREP_WORKER_HEAP_MB", "-1")
    with pytest.raises(ValueError, match="MMPREP_WORKER_HEAP_MB must be >= 0"):
        settings()
