"""Scaling of video preprocessing with the GPU count: one Python process vs ``mmprep.service`` workers.

Workload: 10 s 1080p H.264 bytes (GOP 250, B-frames) -> 32 sampled frames -> Qwen2-VL
``pixel_values_videos`` (bfloat16) on a GPU, 16 caller threads per GPU.
  in-process   ``decode_video`` + ``preprocess`` in this process, videos spread over the GPUs
  service      ``MediaService(gpus=..., workers_per_gpu=W).preprocess_video``: the caller sends bytes,
               opens the result over CUDA IPC
  host         the host's service (``mmprep.service.host``) shared by P client processes, as vLLM's
               API servers share it with ``--data-parallel-size P``; threads split among them
  per-GPU processes  one in-process caller per GPU (16 threads each), summed: the layout the service
               should match without asking the user to run one process per GPU
Per arm: videos/s, caller CPU-ms per video (the calling process(es), all threads), worker CPU-ms per video;
service arms also: one request at a time split into the worker's time (of which reading the input, decoding,
exporting the result) and a ping; one request at a time taking turns with the in-process path on the same GPU
(paired: the service's added ms without drift between two separate measurements, split into the decodes' difference
and the rest: what the service adds apart from how fast each process's decoder ran); and (JSON) CUDA IPC mappings
the caller had to open per video.

    python3 bench/service_scaling.py --out $OUT/service_scaling.json [--gpus 1,2] [--workers 1,2] [--clients 2,4]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.util beside it

from bench.util import PREPROCESS, cpu_seconds, decode_preprocess, service_spent, wall_ms  # noqa: E402


def _children_cpu() -> float:
    try:
        import psutil
    except ImportError:  # the workers' CPU is then not reported
        return float("nan")
    return cpu_seconds(psutil.Process().children(recursive=True))


def _warm(fn, data: bytes, threads: int) -> None:
    """One concurrent round of ``threads`` calls: every worker, decoder session, CUDA context and IPC mapping the
    timed run will use exists before the clock starts (one call warmed one worker of several)."""
    ts = [threading.Thread(target=fn, args=(data,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def drive(fn, data: bytes, threads: int, videos: int, children: bool = True, go=None) -> dict:
    """Run ``fn(data)`` ``videos`` times from ``threads`` threads after a warm round (and after ``go``, a barrier
    of warm processes, when given); rate and CPU split."""
    left = [videos]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                fn(data)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return

    fn(data)  # warm: kernels, first contexts
    _warm(fn, data, threads)
    if go is not None:
        go.wait()
    c0, k0, t0 = time.process_time(), _children_cpu() if children else 0.0, time.perf_counter()
    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"videos": videos, "wall_s": wall, "videos_per_s": videos / wall,
            "caller_cpu_ms_per_video": 1000 * (time.process_time() - c0) / videos,
            "worker_cpu_ms_per_video": 1000 * (_children_cpu() - k0) / videos if children else float("nan")}


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def latency_ms(fn, data: bytes, n: int = 12, busy=None) -> dict:
    """Median wall ms of one request at a time (low load), after one warm request; with ``busy`` (a service's
    total worker seconds so far, by phase) also the median ms of each phase per request."""
    fn(data)
    times: list[float] = []
    phases: dict[str, list[float]] = {}
    for _ in range(n):
        b0 = busy() if busy else {}
        times.append(wall_ms(lambda: fn(data)))
        if busy:
            b1 = busy()
            for k in b1:
                phases.setdefault(k, []).append(1000 * (b1[k] - b0[k]))
    out = {"latency_ms_c1": _median(times)}
    names = {"busy": "worker"}  # the worker's whole time per request keeps its earlier key
    out.update({f"{names.get(k, k)}_ms_c1": _median(v) for k, v in phases.items()})
    return out


def paired_latency_ms(first, second, data: bytes, n: int = 16, decode_s=None) -> dict:
    """One request at a time, ``first`` then ``second`` in turn (same GPU, same moment: no drift between the arms'
    separate measurements); medians of each and of the per-pair difference ``second - first``. With ``decode_s`` (two
    callables: the seconds each arm's decoding took so far), also the per-pair difference of the decodes and of the
    rest (``paired_beyond_decode_ms_c1``: what the second adds apart from its decoder's speed, which differs between
    processes by where their threads run — README, "One request at a time")."""
    first(data)
    second(data)
    a, b, da, db = [], [], [], []
    for _ in range(n):
        for fn, wall, dec, get in ((first, a, da, decode_s and decode_s[0]), (second, b, db, decode_s and decode_s[1])):
            d0 = get() if get else 0.0
            wall.append(wall_ms(lambda: fn(data)))
            dec.append(1000 * (get() - d0) if get else 0.0)
    out = {"paired_in_process_ms_c1": _median(a), "paired_service_ms_c1": _median(b),
           "paired_overhead_ms_c1": _median([y - x for x, y in zip(a, b)])}
    if decode_s:
        out["paired_decode_diff_ms_c1"] = _median([y - x for x, y in zip(da, db)])
        out["paired_beyond_decode_ms_c1"] = _median([(y - dy) - (x - dx) for x, y, dx, dy in zip(a, b, da, db)])
    return out


def _client(address: str, data: bytes, idx: list[int], threads: int, videos: int, go, out) -> None:
    """One caller process of the host arm: attach, wait for the start, drive its share, report."""
    from mmprep.service.host import attach

    svc = attach(address, start=False)

    def served(d: bytes) -> None:
        svc.preprocess_video(d, decode={"indices": idx}, **PREPROCESS)

    out.put(drive(served, data, threads, videos, children=False, go=go))


def _own_gpu(gpu: int, data: bytes, idx: list[int], threads: int, videos: int, go, out) -> None:
    """One process of the per-GPU arm: in-process decode + preprocess on its GPU."""
    from bench.util import kernels_ready

    kernels_ready()
    out.put(drive(lambda d: decode_preprocess(d, idx, f"cuda:{gpu}"), data, threads, videos, children=False, go=go))


def together(target, arg_sets: list[tuple]) -> dict:
    """Run ``target(*args, go, out)`` in one spawned process per ``args``; start their clocks together once every
    process has warmed up (a barrier); videos/s over the common wall time, the processes' CPU per video summed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    go, out = ctx.Barrier(len(arg_sets) + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, go, out)) for args in arg_sets]
    for p in procs:
        p.start()
    go.wait(timeout=300)
    t0 = time.perf_counter()
    parts = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    n = sum(r["videos"] for r in parts)
    return {"videos": n, "wall_s": wall, "videos_per_s": n / wall,
            "caller_cpu_ms_per_video": sum(r["caller_cpu_ms_per_video"] * r["videos"] for r in parts) / n,
            "worker_cpu_ms_per_video": float("nan")}


def per_gpu_arm(gpus: list[int], data: bytes, idx: list[int], threads: int, videos: int) -> dict:
    """One process per GPU, each ``threads`` threads and ``videos`` videos (contexts, kernels, decoders warm first)."""
    return together(_own_gpu, [(g, data, idx, threads, videos) for g in gpus])


def host_arm(gpus: list[int], w: int, clients: int, data: bytes, idx: list[int], threads: int, videos: int) -> dict:
    """The host's service with ``clients`` caller processes; videos/s over all, CPU of the callers summed."""
    import os
    import signal

    from mmprep.service.host import attach

    address = f"/tmp/mmprep-bench-{os.getpid()}.sock"
    host = attach(address, gpus=gpus, workers_per_gpu=w, idle_exit=30)
    host_pid = host.stats()["pid"]
    r = together(_client, [(address, data, idx, max(1, threads // clients), videos // clients)] * clients)
    os.kill(host_pid, signal.SIGTERM)
    for suffix in (".key", ".lock", ".log"):
        if os.path.exists(address + suffix):
            os.unlink(address + suffix)
    return {**r, "clients": clients}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default=None, help="GPU counts to try, e.g. 1,2 (default: 1 and all)")
    ap.add_argument("--workers", default="1,2", help="workers per GPU to try")
    ap.add_argument("--clients", default="", help="caller process counts for the host arm, e.g. 2,4 (none: skip it)")
    ap.add_argument("--threads-per-gpu", type=int, default=16)
    ap.add_argument("--videos-per-gpu", type=int, default=96)
    ap.add_argument("--clip", default="h264_1080p_gop250")
    ap.add_argument("--arms", default="in-process,per-gpu,service",
                    help="of in-process, per-gpu, service (host arms follow --clients)")
    ap.add_argument("--in-process-gpus", default=None,
                    help="GPU counts for the in-process arm (default: every count; it stays at one GPU's rate)")
    ap.add_argument("--pairs", type=int, default=16, help="service / in-process pairs for the paired c=1 overhead")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None,
                    help="only write --out from earlier runs' JSON files / printed lines (no measuring)")
    ap.add_argument("--note", default="", help="with --merge: a line for the table's heading")
    a = ap.parse_args()
    if a.merge:
        return merge(a.merge, a.out, a.note)

    import mmprep
    from bench.media import clip_path
    from mmprep import ipc
    from bench.util import kernels_ready, sample32_of
    from mmprep.service import MediaService

    kernels_ready()
    n_all = torch.cuda.device_count()
    counts = [int(x) for x in a.gpus.split(",")] if a.gpus else sorted({1, n_all})
    data = clip_path(a.clip).read_bytes()
    idx = sample32_of(data)
    meta = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0), "gpus_visible": n_all,
            "clip": a.clip, "frames": len(idx), "threads_per_gpu": a.threads_per_gpu, "torch": torch.__version__}
    results: list[dict] = []

    def done(row: dict) -> None:
        """Keep a finished arm: print it, and write everything so far (a run cut short keeps what it measured)."""
        results.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))

    for n in counts:
        gpus = list(range(n))
        turn = iter(range(1 << 60))

        def in_process(d: bytes) -> None:
            decode_preprocess(d, idx, f"cuda:{gpus[next(turn) % n]}")

        arms = a.arms.split(",")
        if "in-process" in arms and (a.in_process_gpus is None or str(n) in a.in_process_gpus.split(",")):
            r = drive(in_process, data, a.threads_per_gpu * n, a.videos_per_gpu * n, children=False)
            decode_only = latency_ms(lambda d: mmprep.decode_video(d, indices=idx, device="cuda:0"), data)
            done({"arm": "in-process", "gpus": n, "workers_per_gpu": 0, **r, **latency_ms(in_process, data),
                  "decode_ms_c1": decode_only["latency_ms_c1"]})
        if "per-gpu" in arms:
            r = per_gpu_arm(gpus, data, idx, a.threads_per_gpu, a.videos_per_gpu)
            done({"arm": "process per GPU", "gpus": n, "workers_per_gpu": 0, **r})
        for w in [int(x) for x in a.workers.split(",")] if "service" in arms else []:
            with MediaService(gpus=gpus, workers_per_gpu=w) as svc:
                def served(d: bytes) -> None:
                    out = svc.preprocess_video(d, decode={"indices": idx}, **PREPROCESS)
                    assert out["pixel_values_videos"].is_cuda

                m0, s0 = ipc.consumer_stats()["mapped"], svc.stats()["shm_created"]
                r = drive(served, data, a.threads_per_gpu * n, a.videos_per_gpu * n)
                r["ipc_maps_per_video"] = (ipc.consumer_stats()["mapped"] - m0) / r["videos"]  # ~1 ms of caller CPU each
                r["shm_new_per_video"] = (svc.stats()["shm_created"] - s0) / r["videos"]  # ~8 ms of caller CPU each
                r.update(latency_ms(served, data, busy=lambda: service_spent(svc)))
                r["ping_ms_c1"] = latency_ms(lambda _: svc.ping(), b"")["latency_ms_c1"]
                here = {"decode": 0.0}

                def solo(d: bytes) -> None:  # in this process, on GPU 0
                    spent = {}
                    decode_preprocess(d, idx, "cuda:0", spent)
                    here["decode"] += spent["decode"]

                on_0 = lambda d: svc.preprocess_video(d, gpu=0, decode={"indices": idx}, **PREPROCESS)  # noqa: E731
                r.update(paired_latency_ms(solo, on_0, data, n=a.pairs,  # the same GPU both ways (GPUs differ by a few ms)
                                           decode_s=(lambda: here["decode"], lambda: service_spent(svc)["decode"])))
            done({"arm": "service", "gpus": n, "workers_per_gpu": w, **r})
            for c in [int(x) for x in a.clients.split(",") if x]:
                r = host_arm(gpus, w, c, data, idx, a.threads_per_gpu * n, a.videos_per_gpu * n)
                done({"arm": f"host x{c} processes", "gpus": n, "workers_per_gpu": w, **r})
    write(results, meta, a.out)


def write(results: list[dict], meta: dict, out: str | None, note: str = "") -> None:
    """Print the table; with ``out``, write it (.md), the data (.json) and the plot (.png) beside it."""
    rows = ["| arm | GPUs | workers/GPU | videos/s | x same arm, fewest GPUs | x in-process, 1 GPU | caller CPU-ms/video |"
            " worker CPU-ms/video | ms, one at a time (in the worker: reading input, decoding, exporting; ping; here: input into shared memory, opening the result) |", "|---|---|---|---|---|---|---|---|---|"]
    fewest = min(r["gpus"] for r in results)
    base = {(r["arm"], r["workers_per_gpu"]): r["videos_per_s"] for r in results if r["gpus"] == fewest}
    one_gpu = next((r["videos_per_s"] for r in results if r["arm"] == "in-process" and r["gpus"] == 1), float("nan"))
    for r in results:
        one = base.get((r["arm"], r["workers_per_gpu"]), r["videos_per_s"])
        rows.append(f"| {r['arm']} | {r['gpus']} | {r['workers_per_gpu'] or '-'} | {r['videos_per_s']:.1f} | "
                    f"{r['videos_per_s'] / one:.2f} | {r['videos_per_s'] / one_gpu:.2f} | "
                    f"{r['caller_cpu_ms_per_video']:.1f} | {r['worker_cpu_ms_per_video']:.0f} | "
                    f"{_latency(r)} |")
    print("\n".join(rows))
    if out:
        Path(out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        Path(out).with_suffix(".md").write_text(
            f"# mmprep.service scaling, {meta['date']}, {meta['device']} x{meta['gpus_visible']}, {meta['clip']}\n\n"
            + (note + "\n\n" if note else "") + "\n".join(rows) + "\n")
        plot(results, str(Path(out).with_suffix(".png")), f"{meta['clip']}, {meta['device']}, {meta['date']}")


def merge(paths: list[str], out: str, note: str) -> None:
    """One table from several runs: JSON files this script wrote, or its printed JSON lines (a run cut short)."""
    results, meta = [], None
    for p in paths:
        text = Path(p).read_text()
        if text.lstrip().startswith("{\n") or text.lstrip().startswith('{"meta"'):
            d = json.loads(text)
            meta = meta or d["meta"]
            results += d["results"]
        else:
            results += [json.loads(line) for line in text.splitlines() if line.startswith('{"arm"')]
    if meta is None:
        raise SystemExit("--merge needs at least one JSON file this script wrote (for the run's facts)")
    for r in results:
        if r["arm"] in ("in-process", "process per GPU"):  # no workers (runs before 2026-11-28 13:00 counted
            r["worker_cpu_ms_per_video"] = float("nan")   # processes other arms left behind)
    results.sort(key=lambda r: r["gpus"])
    write(results, meta, out, note)


def _latency(r: dict) -> str:
    if "latency_ms_c1" not in r:
        return "-"
    parts = [f"{k} {r[f'{k}_ms_c1']:.1f}" for k in ("read", "decode", "export") if f"{k}_ms_c1" in r]
    if "worker_ms_c1" not in r:  # in-process: its decode share, for the worker's to be compared with
        return f"{r['latency_ms_c1']:.1f}" + (f" ({', '.join(parts)})" if parts else "")
    ping = f"; ping {r['ping_ms_c1']:.2f}" if "ping_ms_c1" in r else ""  # (absent from lines a cut run printed short)
    ping += "".join(f"; {k.removeprefix('caller_')} here {r[f'{k}_ms_c1']:.2f}" for k in ("caller_input", "caller_open")
                    if f"{k}_ms_c1" in r)
    paired = (f"; paired with in-process: {r['paired_service_ms_c1']:.1f} vs {r['paired_in_process_ms_c1']:.1f}, "
              f"{r['paired_overhead_ms_c1']:+.1f}" if "paired_overhead_ms_c1" in r else "")
    if "paired_beyond_decode_ms_c1" in r:
        paired += (f" (decode {r['paired_decode_diff_ms_c1']:+.1f}, the rest {r['paired_beyond_decode_ms_c1']:+.1f})")
    return (f"{r['latency_ms_c1']:.1f} (worker {r['worker_ms_c1']:.1f}{': ' if parts else ''}{', '.join(parts)}{ping})"
            + paired)


def plot(results: list[dict], png: str, title: str) -> None:
    """videos/s against the GPU count, one line per arm (and workers per GPU)."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        name = r["arm"] + (f", {r['workers_per_gpu']} worker/GPU" if r["workers_per_gpu"] else "")
        lines.setdefault(name, []).append((r["gpus"], r["videos_per_s"]))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in lines.items():
        pts.sort()
        ax.plot([g for g, _ in pts], [v for _, v in pts], marker="o", label=name)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("videos/s (bytes -> pixel_values_videos)")
    ax.set_xticks(sorted({r["gpus"] for r in results}))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
