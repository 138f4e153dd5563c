"""One way to time a benchmark round: wall time from pytest-benchmark, CPU time beside it."""

from __future__ import annotations

import time

import torch


def run_rounds(benchmark, round_fn, items: int, rounds: int = 3, **info) -> None:
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
    secs = benchmark.stats.stats.mean
    benchmark.extra_info.update(items=items, items_per_s=items / secs, cpu_ms_per_item=1000 * cpu[0] / rounds / items, **info)
