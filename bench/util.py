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

    round_fn()  # warm-up: pools, kernels, caches
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    benchmark.pedantic(timed, rounds=rounds, iterations=1)
    secs = benchmark.stats.stats.mean
    benchmark.extra_info.update(items=items, items_per_s=items / secs, cpu_ms_per_item=1000 * cpu[0] / rounds / items, **info)
