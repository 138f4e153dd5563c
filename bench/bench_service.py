"""Service vs in-process: 10 s 1080p H.264 bytes -> 32 frames -> Qwen2-VL ``pixel_values_videos`` on 1..N GPUs.

    in-process  ``decode_video`` + ``preprocess`` in this process (16 threads per GPU, videos spread over the GPUs)
    service     ``MediaService(gpus=...)``: this process sends bytes and opens the result over CUDA IPC
items/s is videos/s; CPU ms / item is this (calling) process's CPU per video, all its threads.
``bench/service_scaling.py`` adds the one-process-per-GPU and host-service layouts and a plot.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from .media import clip_path
from .util import PREPROCESS, VIDEOS_PER_THREAD, decode_preprocess, kernels_ready, run_rounds, run_threads, sample32_of

CLIP = "h264_1080p_gop250"
THREADS_PER_GPU = 16
_N = max(1, torch.cuda.device_count())
GPU_COUNTS = sorted({1, _N} | {2**k for k in range(_N.bit_length()) if 2**k <= _N})
"""1, 2, 4, ... and every GPU of the machine."""


@pytest.mark.gpu
@pytest.mark.parametrize("gpus", GPU_COUNTS)
@pytest.mark.parametrize("arm", ["in-process", "service"])
def bench_service_vs_in_process(benchmark, arm, gpus):
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} GPUs")
    kernels_ready()
    data = clip_path(CLIP).read_bytes()
    idx = sample32_of(data)
    benchmark.group = f"service vs in-process: 10 s 1080p H.264 -> qwen2_vl pixel_values_videos, {gpus} GPU(s)"
    threads = THREADS_PER_GPU * gpus
    info = dict(path=arm, threads=threads, gpus=gpus)
    if arm == "in-process":
        turn = itertools.count()

        def one(d: bytes) -> int:
            return decode_preprocess(d, idx, f"cuda:{next(turn) % gpus}")["pixel_values_videos"].shape[0] > 0

        run_rounds(benchmark, lambda: run_threads(one, data, threads), threads * VIDEOS_PER_THREAD, rounds=2, **info)
        return
    from mmprep.service import MediaService

    with MediaService(gpus=list(range(gpus))) as svc:
        def served(d: bytes) -> int:
            return svc.preprocess_video(d, decode={"indices": idx}, **PREPROCESS)["pixel_values_videos"].shape[0] > 0

        run_rounds(benchmark, lambda: run_threads(served, data, threads), threads * VIDEOS_PER_THREAD, rounds=2, **info)
