"""c=1 latency of decode + Qwen2-VL preprocess on GPU 0, in this process and in a service worker, for each way of
running a split decode (``MMPREP_NVDEC_SPLIT``: the second half on a helper thread, both halves fed by one thread in
turn, or no split): median ms of each path and of the paired difference, and this process's CPU ms per request.

    python3 bench/c1_split_modes.py h264_1080p_gop250 11 "threads;interleave;off;threads@2,3"   # clip, pairs, modes

A mode ``name@cpus`` (e.g. ``threads@2,3``) confines the worker process to those CPUs (the caller stays free): is
the worker's slower split decode where its threads run? Run from the repository root; prints one JSON line per mode.
"""
import json, os, sys, time

if __name__ == "__mp_main__" and os.environ.get("C1_PIN_WORKER"):
    # a spawned worker runs this module first, as __mp_main__: its threads, made later, inherit the CPU set
    os.sched_setaffinity(0, {int(c) for c in os.environ["C1_PIN_WORKER"].split(",")})

sys.path.insert(0, "bench")

from media import clip_path
from util import PREPROCESS, decode_preprocess, median as med, sample32_of, wall_ms
from mmprep.config import settings
from mmprep.service import MediaService


def main():
    clip, n = sys.argv[1], int(sys.argv[2])
    modes = sys.argv[3].split(";") if len(sys.argv) > 3 else ["threads", "interleave", "off"]
    data = clip_path(clip).read_bytes()
    idx = sample32_of(data)
    for mode in modes:
        split, _, cpus = mode.partition("@")
        os.environ["MMPREP_NVDEC_SPLIT"] = split  # this process's next settings() and the workers spawned below
        os.environ["C1_PIN_WORKER"] = cpus
        settings.cache_clear()
        here = lambda: decode_preprocess(data, idx, "cuda:0")  # noqa: E731
        with MediaService(gpus=[0], workers_per_gpu=1) as svc:
            served = lambda: svc.preprocess_video(data, gpu=0, decode={"indices": idx}, **PREPROCESS)  # noqa: E731
            for f in (here, served, here, served):
                f()
            a, b, cpu = [], [], []
            for _ in range(n):
                for f, out in ((here, a), (served, b)):
                    c0 = time.process_time()
                    out.append(wall_ms(f))
                    if f is here:
                        cpu.append(1000 * (time.process_time() - c0))
            worker = svc.stats()["workers"][0]
            decode_s, affinity = worker["decode_s"], sorted(os.sched_getaffinity(worker["pid"]))
        print(json.dumps({"clip": clip, "split": mode, "worker_cpus": affinity if cpus else "all", "here": med(a), "service": med(b),
                          "paired": med([y - x for x, y in zip(a, b)]), "here_cpu_ms": med(cpu),
                          "worker_decode_s_total": round(decode_s, 2)}), flush=True)


if __name__ == "__main__":
    main()
