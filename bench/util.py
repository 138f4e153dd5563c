"""One way to time a benchmark round: wall time from pytest-benchmark, CPU time beside it."""

from __future__ import annotations

import time

import torch


def kernels_ready() -> None:
    """Build the fused kernels before timing; refuse to time the torch fallback under the kernel's name."""
    if torch.cuda.is_available():
        from mmprep.config import settings
        from mmprep.kernels import fused

        ok = fused(wait=True) is not None or not settings().kernels
        assert ok, "the fused kernels did not build; set MMPREP_KERNELS=0 to bench without them"


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
