"""Decode and preprocess a video made on the fly: NVDEC on a GPU if there is one, else the CPU.

    python examples/decode_and_preprocess.py [--codec h264] [--frames 16] [--size 1280x720]

Encodes a synthetic clip with PyAV (each frame carries its index), decodes 16 uniformly sampled
frames with ``mmprep.decode_video(device="auto")``, checks they are the right frames, then
resizes to a 28-multiple and normalizes with CLIP mean/std on the same device.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F

import mmprep
from mmprep.testing import make_video, read_index

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(frames: torch.Tensor, *, factor: int = 28, max_side: int = 448) -> torch.Tensor:
    """(T,H,W,3) uint8 -> (T,3,h,w) float32: bicubic resize to multiples of ``factor``, rescale, normalize."""
    t, h, w, _ = frames.shape
    scale = min(1.0, max_side / max(h, w))
    nh, nw = max(factor, round(h * scale / factor) * factor), max(factor, round(w * scale / factor) * factor)
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


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
    pixels = preprocess(video.frames)
    if pixels.is_cuda:
        torch.cuda.synchronize()
    t3 = time.perf_counter()

    got = [read_index(f) for f in video.frames.cpu().numpy()]
    assert got == video.indices, f"decoded frames {got} != requested {video.indices}"
    print(f"clip: {args.codec} {width}x{height}, {len(data) / 1e6:.2f} MB, encoded in {t1 - t0:.2f}s")
    print(f"decoded: {video}")
    print(f"  frames verified by their embedded index: {got}")
    print(f"preprocessed: {tuple(pixels.shape)} {pixels.dtype} on {pixels.device}, "
          f"mean {pixels.mean().item():+.3f}, std {pixels.std().item():.3f}")
    print(f"time: decode {1000 * (t2 - t1):.1f} ms ({video.backend}), preprocess {1000 * (t3 - t2):.1f} ms")


if __name__ == "__main__":
    main()
