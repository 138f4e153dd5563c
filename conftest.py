"""Root conftest: plain ``pytest`` runs the unit tests; ``pytest --benchmark-only`` runs bench/."""

import pytest


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run `pytest --benchmark-only`")
    for item in items:
        if "/bench/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
