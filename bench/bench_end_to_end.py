"""End to end: 10 s 1080p H.264 bytes -> Qwen2-VL ``pixel_values_videos`` (32 sampled frames).

    A  OpenCV decode (vLLM's default loader)      + HF Qwen2VLVideoProcessor on the CPU
    B  NVDEC decode (mmprep) -> host copy          + HF processor on the CPU
    C  NVDEC decode (mmprep), frames stay on GPU   + HF processor on cuda
    mmprep  NVDEC decode + fused kernel (mmprep.preprocess)
CPU milliseconds per video (process time, all threads) stand beside the wall-clock rate: on a
many-GPU host the CPU is what runs out.
"""

from __future__ import annotations

import pytest

import mmprep

from .media import clip_path
from .util import VIDEOS_PER_THREAD, kernels_ready, run_rounds, run_threads, sample32

CLIP = "h264_1080p_gop250"
gpu = pytest.mark.gpu


def _hf():
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor()


def path_a():
    import cv2
    import numpy as np

    proc, path = _hf(), str(clip_path(CLIP))

    def run(_: bytes) -> int:
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        want, frames = set(sample32(total)), []
        for i in range(max(want) + 1):
            if not cap.grab():
                break
            if i in want:
                ok, f = cap.retrieve()
                frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        cap.release()
        out = proc(videos=[np.stack(frames)], return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=False)
        return out["pixel_values_videos"].shape[0] > 0

    return run


def path_b():
    proc = _hf()

    def run(data: bytes) -> int:
        frames = mmprep.decode_video(data, num_frames=32, device="cuda").frames.cpu()
        out = proc(videos=[frames], return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=False)
        return out["pixel_values_videos"].shape[0] > 0

    return run


def path_c():
    proc = _hf()

    def run(data: bytes) -> int:
        frames = mmprep.decode_video(data, num_frames=32, device="cuda").frames.permute(0, 3, 1, 2)
        out = proc(videos=[frames], return_tensors="pt", device="cuda", do_sample_frames=False,
                   cap_pixels_per_frame=False)
        return out["pixel_values_videos"].shape[0] > 0

    return run


def path_mmprep():
    def run(data: bytes) -> int:
        video = mmprep.decode_video(data, num_frames=32, device="cuda")
        return mmprep.preprocess(videos=[video], device="cuda")["pixel_values_videos"].shape[0] > 0

    return run


PATHS = {"A-opencv+hf-cpu": path_a, "B-nvdec+host+hf-cpu": path_b, "C-nvdec+hf-cuda": path_c, "mmprep": path_mmprep}


@pytest.mark.parametrize("threads", [1, 16])
@pytest.mark.parametrize("path", [pytest.param(p, marks=[] if p.startswith("A") else gpu) for p in PATHS])
def bench_bytes_to_qwen2_vl(benchmark, path, threads):
    kernels_ready()
    data = clip_path(CLIP).read_bytes()
    fn = PATHS[path]()
    benchmark.group = f"end to end: 10 s 1080p H.264 -> qwen2_vl pixel_values_videos, threads={threads}"
    videos = threads * VIDEOS_PER_THREAD
    run_rounds(benchmark, lambda: run_threads(fn, data, threads), videos, rounds=2, path=path, threads=threads)
