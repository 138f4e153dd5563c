"""Decode and preprocess a video made on the fly: NVDEC on a GPU if there is one, else the CPU.

    python examples/decode_and_preprocess.py [--codec h264] [--frames 16] [--size 1280x720]

Encodes a synthetic clip with PyAV (each frame carries its index), decodes 16 uniformly sampled
frames with ``mmprep.decode_video(device="auto")``, checks they are the right frames, then turns them
into Qwen2-VL's ``pixel_values_videos`` / ``video_grid_thw`` with ``mmprep.preprocess`` on the same
device (the fused kernel on a GPU). Where transformers is installed, it compares with HF's
``Qwen2VLVideoProcessor`` on the same frames and device.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

import mmprep
from mmprep.testing import make_video, read_index


def compare_with_hf(frames: torch.Tensor, pixels: torch.Tensor) -> str:
    """Max abs difference to HF's Qwen2VLVideoProcessor on the same frames and device, if installed."""
    try:
        from transformers import Qwen2VLVideoProcessor
    except ImportError:
        return "transformers not installed: HF comparison skipped"
    hf = Qwen2VLVideoProcessor()
    ref = hf(videos=[frames.permute(0, 3, 1, 2)], return_tensors="pt", device=str(frames.device),
             do_sample_frames=False, cap_pixels_per_frame=False)["pixel_values_videos"]
    return f"max abs difference to HF Qwen2VLVideoProcessor: {(ref.to(pixels.device) - pixels).abs().max().item():.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", default="h264", choices=sorted(mmprep.testing.ENCODERS))
    ap.add_argument("--frames", type=int, default=16, help="frames to sample")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N"')
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    width, height = (int(x) for x in args.size.lower().split("x"))

    t0 = time.perf_counter()
    data = make_video(args.codec, width=width, height=height, frames=120, fps=30, gop=60)
    t1 = time.perf_counter()
    video = mmprep.decode_video(data, num_frames=args.frames, device=args.device)
    if video.frames.is_cuda:
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    out = mmprep.preprocess(videos=[video], profile="qwen2_vl", device=video.frames.device)
    pixels = out["pixel_values_videos"]
    if pixels.is_cuda:
        torch.cuda.synchronize()
    t3 = time.perf_counter()

    got = [read_index(f) for f in video.frames.cpu().numpy()]
    assert got == video.indices, f"decoded frames {got} != requested {video.indices}"
    print(f"clip: {args.codec} {width}x{height}, {len(data) / 1e6:.2f} MB, encoded in {t1 - t0:.2f}s")
    print(f"decoded: {video}")
    print(f"  frames verified by their embedded index: {got}")
    print(f"preprocessed (Qwen2-VL): pixel_values_videos {tuple(pixels.shape)} {pixels.dtype} on {pixels.device}, "
          f"video_grid_thw {out['video_grid_thw'].tolist()}")
    print(f"  {compare_with_hf(video.frames, pixels)}")
    print(f"time: decode {1000 * (t2 - t1):.1f} ms ({video.backend}), preprocess {1000 * (t3 - t2):.1f} ms")


if __name__ == "__main__":
    main()
