"""Where the service's c=1 milliseconds go, one clip on GPU 0: the in-process path on the main thread vs another
thread vs a service worker (one per GPU; its decode phase), decode alone; and copying the input in (1 / 2 / 4 threads).

    python3 bench/c1_breakdown.py h264_1080p_gop250 15      # clip name (bench/media.py), rounds; prints one JSON line

Run from the repository root. Found (2026-11-28, H200): H.264 decodes ~20 ms slower in the worker than in the caller,
HEVC ~3 ms; see ``decode_by_process.py`` for whether that is the worker or any second process.
"""
import ctypes, json, sys, time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, "bench")
import numpy as np

import mmprep
from media import clip_path
from util import PREPROCESS, decode_preprocess, median, sample32_of, wall_ms
from mmprep.service import MediaService
from mmprep.service.shm import Arena


def med(xs):
    return median(xs, 2)


def main():
    clip, n = sys.argv[1], int(sys.argv[2])
    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    ex = ThreadPoolExecutor(1)
    ip = lambda: decode_preprocess(data, idx, "cuda:0")  # noqa: E731
    dec = lambda: mmprep.decode_video(data, indices=idx, device="cuda:0")  # noqa: E731
    arms = {"main": ip, "thread": lambda: ex.submit(ip).result(), "decode_main": dec}
    out = {"clip": clip}
    with MediaService(gpus=[0], workers_per_gpu=1) as svc:
        arms["service"] = lambda: svc.preprocess_video(data, gpu=0, decode={"indices": idx}, **PREPROCESS)
        for f in arms.values():
            f(); f()
        times = {k: [] for k in arms}
        wdec, wbusy = [], []
        for _ in range(n):
            for k, f in arms.items():
                s0 = svc.stats()["workers"][0]
                times[k].append(wall_ms(f))
                if k == "service":
                    s1 = svc.stats()["workers"][0]
                    wdec.append(1000 * (s1["decode_s"] - s0["decode_s"])); wbusy.append(1000 * (s1["busy_s"] - s0["busy_s"]))
        out.update({k: med(v) for k, v in times.items()}, worker_decode=med(wdec), worker_busy=med(wbusy))
    a = Arena()
    puts = []
    for _ in range(30):
        t = time.perf_counter(); r = a.put(data); puts.append(1000 * (time.perf_counter() - t)); a.give_back(r)
    dst = np.empty(len(data), np.uint8); src = np.frombuffer(data, np.uint8)
    pool = ThreadPoolExecutor(4)
    def par(k):
        step = -(-len(data) // k)
        fs = [pool.submit(ctypes.memmove, dst.ctypes.data + i, src.ctypes.data + i, min(step, len(data) - i)) for i in range(step, len(data), step)]
        ctypes.memmove(dst.ctypes.data, src.ctypes.data, step); [f.result() for f in fs]
    for k in (1, 2, 4):
        ts = []
        for _ in range(30):
            t = time.perf_counter(); par(k); ts.append(1000 * (time.perf_counter() - t))
        out[f"copy_{k}_threads"] = med(ts)
    out["arena_put"] = med(puts)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
