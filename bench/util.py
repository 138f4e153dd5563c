"""One way to time a benchmark round: wall time from pytest-benchmark, CPU time beside it."""

from __future__ import annotations

import os
import statistics
import threading
import time

import numpy as np
import torch

VIDEOS_PER_THREAD = int(os.environ.get("MMPREP_BENCH_VIDEOS_PER_THREAD", "2"))
"""Videos each thread decodes per round in the threaded video benchmarks."""


def kernels_ready() -> None:
    """Build the fused kernels before timing; refuse to time the torch fallback under the kernel's name."""
    if torch.cuda.is_available():
        from mmprep.config import settings
        from mmprep.kernels import fused

        ok = fused(wait=True) is not None or not settings().kernels
        assert ok, "the fused kernels did not build; set MMPREP_KERNELS=0 to bench without them"


def wall_ms(fn) -> float:
    """Wall ms of ``fn()`` until its GPU work is done."""
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0)


def service_spent(svc) -> dict[str, float]:
    """Seconds all workers of the ``mmprep.service`` ``svc`` spent so far, by phase (``busy``, ``read``, ``decode``,
    ``export``), and this process on its side of them (``caller_input``: bytes into shared memory, ``caller_open``:
    opening results)."""
    stats = svc.stats()
    workers = stats["workers"]
    return {**{k.removesuffix("_s"): sum(w[k] for w in workers) for k in workers[0] if k.endswith("_s")},
            **{k.removesuffix("_s"): v for k, v in stats.items() if k.startswith("caller_")}}


def median(xs, digits: int = 1) -> float:
    """The median of ``xs``, rounded to ``digits`` (what the c=1 diagnostics print)."""
    return round(statistics.median(xs), digits)


def run_rounds(benchmark, round_fn, items: int, rounds: int = 5, **info) -> None:
    """Time ``round_fn`` (which makes ``items`` results), syncing CUDA; record items/s and CPU-ms/item."""
    cpu = [0.0]

    def timed():
        c0 = time.process_time()
        round_fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        cpu[0] += time.process_time() - c0

    # Warm-up: pools, kernels, caches, and GPU clocks (a GPU idle during a CPU-only case before
    # this one clocks down; the first rounds would measure the ramp, not the path).
    t_end, n = time.perf_counter() + 0.5, 0
    while n < 1 or (n < 20 and time.perf_counter() < t_end):
        round_fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        n += 1
    benchmark.pedantic(timed, rounds=rounds, iterations=1)
    st = benchmark.stats.stats
    benchmark.extra_info.update(items=items, items_per_s=items / st.mean, cpu_ms_per_item=1000 * cpu[0] / rounds / items,
                                rounds=rounds, round_ms_min_median_max=[1000 * st.min, 1000 * st.median, 1000 * st.max],
                                **info)


def run_threads(fn, data: bytes, threads: int) -> int:
    """Run ``fn(data)`` VIDEOS_PER_THREAD times on each of ``threads`` threads; return frames made."""
    counts = [0] * threads
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for _ in range(VIDEOS_PER_THREAD):
                counts[t] += fn(data)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts)


def cpu_seconds(procs) -> float:
    """User + system CPU seconds of ``procs`` (psutil processes); ones that already exited count 0."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def sample32(total: int) -> list[int]:
    return np.linspace(0, total - 1, 32, dtype=int).tolist()


PREPROCESS = {"profile": "qwen2_vl", "dtype": torch.bfloat16}
"""The service benchmarks' preprocess options: Qwen2-VL ``pixel_values_videos`` in bfloat16."""


def sample32_of(data: bytes) -> list[int]:
    """32 frame indices spread over the clip ``data`` (its frame count read on the CPU)."""
    import mmprep

    return sample32(mmprep.decode_video(data, indices=[0], device="cpu").total_frames)


def decode_preprocess(data: bytes, indices: list[int], device: str,
                      spent: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The in-process path the service is measured against: decode ``indices`` on ``device``, then ``PREPROCESS``;
    with ``spent``, the seconds ``decode_video`` took go to ``spent["decode"]`` (timed as a worker times its own)."""
    import mmprep

    t0 = time.perf_counter()
    v = mmprep.decode_video(data, indices=indices, device=device)
    if spent is not None:
        spent["decode"] = time.perf_counter() - t0
    return mmprep.preprocess(videos=[v], device=v.frames.device, **PREPROCESS)


# ---- decoders under test: each takes bytes and returns how many frames it produced ----
