"""What mmprep's media work costs a model engine that shares its GPU from another process (as in ``vllm serve``).

In a real server (issue 9, 2026-11-28) the engine is GPU-bound and an mmprep request kept the GPU busy ~21 ms
longer than a request whose media cost nothing. This benchmark takes the server apart: a stand-in engine (a
second process: bf16 matmuls + GELU back to back on ``--gpu``) counts its iterations, while this process runs
the serving workload's media (10 s 1080p H.264 -> fps=2 -> 20 frames -> Qwen2-VL ``pixel_values_videos``, bf16)
at a fixed rate, one mode at a time:

  none        no media work (the engine alone; measured first and last, to see drift)
  full        decode_video + preprocess, what the API server does per request
  decode      decode_video only (NVDEC; PyNvVideoCodec copies every decoded surface; 20 converted to RGB)
  transform   preprocess only, of frames decoded once before (no NVDEC)
A mode may carry settings for its run: ``full:MMPREP_NVDEC_SPLIT=0`` (mmprep's environment variables).

The engine's loss in a mode = 1 - its rate there / its rate alone; the media's own GPU time per video (from a
profile of the same call, in this process alone) says how much of the loss is the media's kernels and how much
is the sharing itself (two CUDA contexts time-slice the GPU).

    python3 bench/gpu_sharing.py --out $OUT/gpu_sharing.json [--rate 6.5] [--seconds 12] [--media-gpu 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.util beside it

from bench.media import clip_path  # noqa: E402
from bench.util import kernels_ready  # noqa: E402

CLIP = "h264_1080p_gop250"
MODES = ("none", "full", "decode", "transform", "none")


def engine(gpu: int) -> None:
    """The stand-in engine: for each line on stdin (seconds), run matmul + GELU for that long; print iterations/s."""
    torch.cuda.set_device(gpu)
    a = torch.randn(4096, 8192, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda") / 100

    def step() -> None:
        torch.nn.functional.gelu(a @ w)

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        secs = float(line)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < secs:
            for _ in range(8):
                step()
            torch.cuda.synchronize()
            n += 8
        print(json.dumps({"iters_per_s": n / (time.perf_counter() - t0)}), flush=True)


class Media:
    """Runs one mode's media work at ``rate`` videos/s from ``threads`` threads until stopped."""

    def __init__(self, data: bytes, device: str, rate: float, threads: int) -> None:
        import mmprep

        self.mmprep, self.data, self.device, self.rate, self.threads = mmprep, data, device, rate, threads
        self.kept = self.decode()  # frames for the transform-only mode

    def decode(self):
        return self.mmprep.decode_video(self.data, fps=2.0, device=self.device)

    def transform(self, v) -> None:
        self.mmprep.preprocess(videos=[v], device=v.frames.device, profile="qwen2_vl", dtype=torch.bfloat16)

    def one(self, mode: str) -> None:
        mode = mode.split(":")[0]
        if mode == "full":
            self.transform(self.decode())
        elif mode == "decode":
            self.decode()
        elif mode == "transform":
            self.transform(self.kept)
        torch.cuda.current_stream(self.device).synchronize()

    def run(self, mode: str, stop: threading.Event) -> dict:
        """Start the mode's threads; they pace themselves at ``rate`` until ``stop``. Returns live counters."""
        out = {"done": 0, "ms": [], "late": 0}
        lock = threading.Lock()
        t0 = time.perf_counter()
        ticket = [0]

        def work() -> None:
            while not stop.is_set():
                with lock:
                    k = ticket[0]
                    ticket[0] += 1
                due = t0 + k / self.rate
                wait = due - time.perf_counter()
                if wait > 0:
                    if stop.wait(wait):
                        return
                else:
                    out["late"] += 1
                s = time.perf_counter()
                self.one(mode)
                with lock:
                    out["done"] += 1
                    out["ms"].append(1000 * (time.perf_counter() - s))

        out["threads"] = [threading.Thread(target=work, daemon=True) for _ in range(self.threads)]
        if mode != "none":
            for t in out["threads"]:
                t.start()
        return out


@contextlib.contextmanager
def mode_settings(mode: str):
    """Apply the ``:NAME=VALUE,...`` settings of ``mode`` for its run, then restore the environment."""
    from mmprep.config import settings

    import mmprep.decode.video_nvdec as nvdec

    pairs = [kv.split("=", 1) for kv in mode.partition(":")[2].split(",") if kv]
    old = {k: os.environ.get(k) for k, _ in pairs}
    os.environ.update(dict(pairs))
    settings.cache_clear()
    if pairs:  # the decoder backend and pool size apply to sessions made from now on: start from a fresh pool
        nvdec._pool = None
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        settings.cache_clear()
        if pairs:
            nvdec._pool = None


def gpu_ms_per_video(media: Media, mode: str, n: int = 5) -> dict:
    """Kernels, copies and their GPU time per video of ``mode``, this process alone (torch profiler / CUPTI)."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        media.one(mode)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            media.one(mode)
    ops, us = Counter(), Counter()
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        kind = "memcpy" if "memcpy" in e.name.lower() else "memset" if "memset" in e.name.lower() else "kernel"
        ops[kind] += 1
        us[kind] += getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
    return {"ops": {k: v / n for k, v in ops.items()}, "gpu_ms": {k: round(v / n / 1000, 3) for k, v in us.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", type=int, default=0, help="the engine's GPU")
    ap.add_argument("--media-gpu", type=int, default=None, help="the media's GPU (default: the engine's)")
    ap.add_argument("--rate", type=float, default=6.5, help="videos/s (the served req/s of the real server)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=12.0, help="engine measurement per mode")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    kernels_ready()
    mgpu = args.gpu if args.media_gpu is None else args.media_gpu
    media = Media(clip_path(CLIP).read_bytes(), f"cuda:{mgpu}", args.rate, args.threads)
    modes = args.modes.split(",")
    profiles = {}
    for m in dict.fromkeys(modes):
        if m != "none":
            with mode_settings(m):
                profiles[m] = gpu_ms_per_video(media, m)
    eng = subprocess.Popen([sys.executable, __file__, "engine", str(args.gpu)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        json.loads(eng.stdout.readline())
        rows = []
        for mode in modes:
            stop = threading.Event()
            with mode_settings(mode):
                live = media.run(mode, stop)
                time.sleep(2.0)  # the media reaches its rate before the engine counts
                c0, done0 = time.process_time(), live["done"]
                eng.stdin.write(f"{args.seconds}\n")
                eng.stdin.flush()
                rate = json.loads(eng.stdout.readline())["iters_per_s"]
                videos = live["done"] - done0
                cpu = time.process_time() - c0
                stop.set()
                for t in live["threads"]:
                    if t.is_alive():
                        t.join()
            ms = sorted(live["ms"]) or [float("nan")]
            row = {"mode": mode, "engine_iters_per_s": round(rate, 2), "media_videos_per_s": round(videos / args.seconds, 2),
                   "media_p50_ms": round(ms[len(ms) // 2], 1), "media_cpu_ms_per_video": round(1000 * cpu / max(videos, 1), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        alone = [r["engine_iters_per_s"] for r in rows if r["mode"] == "none"]
        base = sum(alone) / len(alone)
        for r in rows:
            r["engine_loss_pct"] = round(100 * (1 - r["engine_iters_per_s"] / base), 1)
            p = profiles.get(r["mode"])
            if p and r["media_videos_per_s"]:  # the media's own GPU time as a share of each second
                r["media_kernel_pct_of_gpu"] = round(0.1 * p["gpu_ms"].get("kernel", 0) * r["media_videos_per_s"], 1)
        result = {"meta": {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(args.gpu),
                           "clip": CLIP, "engine_gpu": args.gpu, "media_gpu": mgpu, "rate": args.rate,
                           "threads": args.threads, "seconds": args.seconds},
                  "profiles": profiles, "rows": rows}
        print(json.dumps({"summary": [(r["mode"], r["engine_loss_pct"], r.get("media_kernel_pct_of_gpu")) for r in rows],
                          "profiles": profiles}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    finally:
        eng.stdin.close()
        eng.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "engine":
        engine(int(sys.argv[2]))
    else:
        main()
