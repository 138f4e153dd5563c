"""The media service with GPU workers: NVDEC + kernels in the worker, results opened here over CUDA IPC."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

import mmprep
from mmprep.service import MediaService, WorkerCrashedError

from .helpers import clip
from .hostile import payload_zeroed

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)


@pytest.fixture(scope="module")
def service():
    from mmprep.kernels import fused

    # Workers wait for the fused kernel before they serve; this process must too, or its reference decodes take
    # the torch path while the kernel loads (within 1 of the kernel's values, not equal: test_gpu_nvdec).
    assert fused(wait=True) is not None
    with MediaService(gpus=list(range(min(2, torch.cuda.device_count()))), hang_timeout=60) as s:
        yield s


def test_gpu_results_equal_in_process_and_stay_on_the_gpu(service):
    data = clip("h264", width=320, height=240, frames=48, fps=24, gop=12)
    v = service.decode_video(data, num_frames=6, gpu=0)
    ref = mmprep.decode_video(data, num_frames=6, device="cuda:0")
    assert v.frames.is_cuda and v.frames.device.index == 0 and v.backend == ref.backend == "nvdec"
    diff = (v.frames.int() - ref.frames.int()).abs().max().item()
    assert diff == 0, f"worker and in-process frames differ by up to {diff}"
    assert v.indices == ref.indices and v.timestamps == ref.timestamps
    out = service.preprocess_video(data, gpu=0, decode={"num_frames": 4}, profile="qwen2_vl", dtype=torch.bfloat16)
    want = mmprep.preprocess(videos=[mmprep.decode_video(data, num_frames=4, device="cuda:0")], device="cuda:0",
                             profile="qwen2_vl", dtype=torch.bfloat16)
    assert out.keys() == want.keys()
    for k in want:
        assert out[k].device == want[k].device and torch.equal(out[k], want[k]), k


def test_gpu_worker_decodes_images_with_nvjpeg(service):
    from .images import jpeg

    data = jpeg(480, 640)
    img = service.decode_image(data, gpu=0)
    assert img.is_cuda and torch.equal(img, mmprep.decode_images([data], device="cuda:0")[0])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_results_come_back_on_the_gpu_asked_for(service):
    data = clip("h264", width=320, height=240, frames=24, fps=24, gop=12)
    v = service.decode_video(data, num_frames=3, gpu=1)
    assert v.frames.device.index == 1
    assert torch.equal(v.frames.cpu(), mmprep.decode_video(data, num_frames=3, device="cuda:1").frames.cpu())
    assert next(w for w in service.stats()["workers"] if w["device"] == "cuda:1")["served"] >= 1


def test_bad_media_and_a_killed_gpu_worker(service):
    good = clip("h264", width=320, height=240, frames=24, fps=24, gop=12)
    for bad in (b"", good[: len(good) // 3], payload_zeroed(good)):  # the last passes the probe, fails in NVDEC
        with pytest.raises(mmprep.MediaError):
            service.decode_video(bad, num_frames=4, gpu=0)
    assert service.decode_video(good, num_frames=2, gpu=0).frames.is_cuda  # the worker lives
    i0, w0 = next((i, w) for i, w in enumerate(service.stats()["workers"]) if w["device"] == "cuda:0")
    fut_err: list[BaseException] = []  # the ping goes to that very worker (a GPU has several by default)
    t = threading.Thread(target=lambda: _catch(fut_err, lambda: service.ping(delay=5, worker=i0)))
    t.start()
    time.sleep(1)
    os.kill(w0["pid"], signal.SIGKILL)
    t.join(60)
    assert fut_err and isinstance(fut_err[0], WorkerCrashedError)
    v = service.decode_video(good, num_frames=2, gpu=0)  # the replacement decodes on the same GPU
    assert v.frames.is_cuda and v.frames.device.index == 0
    assert service.stats()["workers"][i0]["restarts"] >= 1


def _catch(out: list, fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        out.append(e)


def test_host_service_hands_gpu_frames_straight_from_the_worker():
    """The host's service (another process) answers with mmprep.ipc handles this process opens directly."""
    from mmprep.service.host import attach

    address = f"/tmp/mmprep-gpu-test-{os.getpid()}-{time.monotonic_ns()}.sock"
    client = attach(address, gpus=[0])
    try:
        data = clip("h264", width=320, height=240, frames=24, fps=24, gop=12)
        v = client.decode_video(data, num_frames=4, gpu=0)
        assert v.frames.is_cuda and v.frames.device.index == 0
        assert torch.equal(v.frames, mmprep.decode_video(data, num_frames=4, device="cuda:0").frames)
        out = client.preprocess_video(data, decode={"num_frames": 4}, profile="qwen2_vl", dtype=torch.bfloat16)
        assert out["pixel_values_videos"].is_cuda
    finally:
        os.kill(client.stats()["pid"], signal.SIGTERM)
        for suffix in (".key", ".lock", ".log"):
            if os.path.exists(address + suffix):
                os.unlink(address + suffix)


def test_the_caller_keeps_a_mapping_cache_sized_to_the_workers(service):
    """GPU results are opened from every worker: the caller's cache of CUDA IPC mappings holds enough of them that
    a steady stream of requests maps nothing again (each mapping ~1 ms of the caller's CPU)."""
    from mmprep import ipc
    from mmprep.service.pool import IDLE_MAPPINGS_PER_WORKER

    workers = sum(w["device"].startswith("cuda") for w in service.stats()["workers"])
    assert ipc._idle_floor[0] >= IDLE_MAPPINGS_PER_WORKER * workers
    data = clip("h264", width=320, height=240, frames=48, fps=24, gop=12)
    for _ in range(2 * workers):  # every worker's allocations seen once
        service.decode_video(data, num_frames=4)
    before = ipc.consumer_stats()
    for _ in range(8 * workers):
        service.decode_video(data, num_frames=4)
    after = ipc.consumer_stats()
    assert after["opened"] - before["opened"] >= 8 * workers
    assert after["unmapped"] == before["unmapped"], (before, after)
    # workers reuse their interprocess events once leases end, and the caller keeps the ones it opened
    assert after["events"] - before["events"] < (after["opened"] - before["opened"]) // 2, (before, after)
