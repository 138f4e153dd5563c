"""Images and transforms: 1080p JPEG -> Qwen2-VL pixel_values, and the 32-frame video transform.

Paths, side by side: mmprep on the GPU (nvJPEG + fused kernel), PIL + HF processor on the CPU
(vLLM's default), nvJPEG + HF processor on cuda, and nvJPEG decode alone (the decode limit).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import mmprep
from mmprep.testing import synthetic_frame

from .util import kernels_ready, run_rounds

gpu = pytest.mark.gpu


def _jpeg_1080p(i: int) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(synthetic_frame(i, 1920, 1080)).save(b, "JPEG", quality=90)
    return b.getvalue()


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    kernels_ready()
    return [_jpeg_1080p(i) for i in range(64)]


def _hf_image_processor():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor()


def path_fn(path: str, batch: list[bytes]):
    if path == "mmprep-gpu":
        return lambda: mmprep.preprocess(images=mmprep.decode_images(batch, device="cuda"), device="cuda")
    if path == "nvjpeg-decode-only":
        from torchvision.io import decode_jpeg

        ts = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch]
        return lambda: decode_jpeg(ts, device="cuda")
    if path == "nvjpeg+hf-cuda":
        from torchvision.io import decode_jpeg

        proc = _hf_image_processor()
        ts = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch]
        return lambda: proc(images=decode_jpeg(ts, device="cuda"), return_tensors="pt", device="cuda")
    if path == "pil+hf-cpu":
        from PIL import Image

        proc = _hf_image_processor()
        return lambda: proc(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in batch], return_tensors="pt")
    raise ValueError(path)


@pytest.mark.parametrize("batch", [32, 64])
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=gpu) for p in ("mmprep-gpu", "nvjpeg+hf-cuda", "nvjpeg-decode-only")] + ["pil+hf-cpu"],
)
def bench_jpeg_to_qwen2_vl(benchmark, jpegs, path, batch):
    benchmark.group = f"1080p JPEG -> qwen2_vl pixel_values, batch {batch}"
    run_rounds(benchmark, path_fn(path, jpegs[:batch]), batch, rounds=2 if path == "pil+hf-cpu" else 10, path=path, batch=batch)


CALLERS = 3  # concurrent requests, as an API server's media threads issue them


@pytest.mark.parametrize("path", [pytest.param(p, marks=gpu) for p in ("mmprep-gpu", "nvjpeg+hf-cuda")])
def bench_jpeg_to_qwen2_vl_concurrent(benchmark, jpegs, path):
    """Batch 64 from 3 threads at once: one caller's transform overlaps another's JPEG decode."""
    import threading

    benchmark.group = f"1080p JPEG -> qwen2_vl pixel_values, batch 64, {CALLERS} concurrent callers"
    fn = path_fn(path, jpegs)

    def round_():
        ts = [threading.Thread(target=lambda: [fn() for _ in range(4)]) for _ in range(CALLERS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    run_rounds(benchmark, round_, 64 * 4 * CALLERS, rounds=3, path=path, batch=64, threads=CALLERS)


@pytest.mark.parametrize("path", [pytest.param("nvjpeg", marks=gpu), "pil"])
def bench_jpeg_decode_64(benchmark, jpegs, path):
    """Decode alone, batch 64 of 1080p: nvJPEG (torchvision) vs PIL (pillow-simd when installed)."""
    import PIL

    benchmark.group = "1080p JPEG decode, batch 64"
    if path == "nvjpeg":
        fn = lambda: mmprep.decode_images(jpegs, device="cuda")  # noqa: E731
    else:
        fn = lambda: mmprep.decode_images(jpegs, device="cpu")  # noqa: E731
    run_rounds(benchmark, fn, 64, rounds=3, path=path if path == "nvjpeg" else f"pil-{PIL.__version__}")


@pytest.fixture(scope="module")
def frames_1080p() -> torch.Tensor:
    return torch.from_numpy(np.stack([synthetic_frame(i, 1920, 1080) for i in range(32)]))


@pytest.mark.parametrize(
    "path", [pytest.param(p, marks=gpu) for p in ("mmprep-kernel", "mmprep-torch", "hf-cuda")] + ["hf-cpu"]
)
def bench_video_transform_32x1080p(benchmark, frames_1080p, path):
    from transformers import Qwen2VLVideoProcessor

    benchmark.group = "video transform: 32 x 1080p frames -> qwen2_vl pixel_values_videos"
    proc = Qwen2VLVideoProcessor()
    if path.startswith("mmprep") or path == "hf-cuda":
        kernels_ready()
        frames = frames_1080p.cuda()
    else:
        frames = frames_1080p
    fn = {
        "mmprep-kernel": lambda: mmprep.preprocess(videos=[frames], device="cuda"),
        "mmprep-torch": lambda: mmprep.preprocess(videos=[frames], device="cuda", use_kernel=False),
        "hf-cuda": lambda: proc(videos=[frames], return_tensors="pt", device="cuda", cap_pixels_per_frame=False),
        "hf-cpu": lambda: proc(videos=[frames], return_tensors="pt", cap_pixels_per_frame=False),
    }[path]
    run_rounds(benchmark, fn, 32, rounds=2 if path == "hf-cpu" else 5, path=path, unit="frames")
