"""Is the service's slower c=1 decode a matter of which process made its NVDEC decoders second? One clip, decode +
Qwen2-VL preprocess on GPU 0, one request at a time, median ms:

- ``alone``: in this process with no service running, then the service with this process's decoders destroyed, twice
  over (each path as a user has it: never both at once);
- ``here-first`` / ``worker-first``: both paths alive, taking turns, after warming this process's decoders first or
  the worker's first;
- ``worker-context-first`` (must come first: this process has no CUDA context yet): the worker decodes before this
  process makes its CUDA context; then blocks of each path in turn.

    python3 bench/c1_order.py h264_1080p_gop250 11 [modes]   # clip (bench/media.py), requests per block, modes
                                                             # (comma-separated; default alone,here-first,worker-first)

Run from the repository root.
"""
import gc, json, sys

sys.path.insert(0, "bench")
import torch

from media import clip_path
from util import PREPROCESS, decode_preprocess, median as med, sample32_of, wall_ms as ms
from mmprep.decode import video_nvdec
from mmprep.service import MediaService


def drop_decoders():
    """Destroy this process's NVDEC decoders (the pool is made again on next use)."""
    video_nvdec._pool = None
    gc.collect()
    torch.cuda.synchronize()


def main():
    clip, n = sys.argv[1], int(sys.argv[2])
    modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["alone", "here-first", "worker-first"]
    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    here = lambda: decode_preprocess(data, idx, "cuda:0")  # noqa: E731
    served = lambda svc: svc.preprocess_video(data, gpu=0, decode={"indices": idx}, **PREPROCESS)  # noqa: E731

    if "worker-context-first" in modes:
        assert modes[0] == "worker-context-first", "worker-context-first must be the first mode"
        blocks = {"service": [], "here": []}
        with MediaService(gpus=[0], workers_per_gpu=1) as svc:
            for _ in range(3):
                served(svc)
            for _ in range(2):
                blocks["service"].append(med([ms(lambda: served(svc)) for _ in range(n)]))
                here(); here()
                blocks["here"].append(med([ms(here) for _ in range(n)]))
        print(json.dumps({"clip": clip, "mode": "worker-context-first", **blocks}), flush=True)

    blocks = {"here": [], "service": []}
    for _ in range(2 if "alone" in modes else 0):
        drop_decoders()
        for _ in range(2):
            here()
        blocks["here"].append(med([ms(here) for _ in range(n)]))
        drop_decoders()
        with MediaService(gpus=[0], workers_per_gpu=1) as svc:
            for _ in range(2):
                served(svc)
            blocks["service"].append(med([ms(lambda: served(svc)) for _ in range(n)]))
    if "alone" in modes:
        print(json.dumps({"clip": clip, "mode": "alone", **blocks}), flush=True)

    for mode in [m for m in modes if m in ("here-first", "worker-first")]:
        drop_decoders()
        if mode == "here-first":
            here(); here()
        with MediaService(gpus=[0], workers_per_gpu=1) as svc:
            served(svc); served(svc)
            if mode == "worker-first":
                here(); here()
            a, b = [], []
            for _ in range(n):
                a.append(ms(here))
                b.append(ms(lambda: served(svc)))
        print(json.dumps({"clip": clip, "mode": mode, "here": med(a), "service": med(b),
                          "paired": med([y - x for x, y in zip(a, b)])}), flush=True)


if __name__ == "__main__":
    main()
