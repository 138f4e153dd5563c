"""Root conftest: plain ``pytest`` runs the unit tests, ``pytest --benchmark-only`` runs bench/;
tests and benchmarks marked ``gpu`` skip where CUDA is absent."""

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    bench_only = config.getoption("benchmark_only", default=False)
    skip_bench = pytest.mark.skip(reason="benchmark: run `pytest --benchmark-only`")
    skip_gpu = pytest.mark.skip(reason="needs CUDA (run on the GPU machine)")
    cuda = torch.cuda.is_available()
    for item in items:
        if not bench_only and "/bench/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip_bench)
        elif not cuda and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
