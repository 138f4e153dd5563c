"""mmprep.memory: the byte budget decodes acquire from (blocking, too-large, release on free)."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch

import mmprep
from mmprep import memory


def test_budget_blocks_until_released():
    b = memory.Budget(100)
    first = b.acquire(70)
    got = []
    th = threading.Thread(target=lambda: got.append(b.acquire(50)))
    th.start()
    time.sleep(0.2)
    assert th.is_alive() and not got and b.available_bytes == 30
    first.release()
    first.release()  # idempotent
    th.join(5)
    assert got and b.available_bytes == 50
    got[0].release()
    assert b.available_bytes == 100


def test_more_than_the_whole_budget_is_refused_at_once():
    b = memory.Budget(100)
    with pytest.raises(mmprep.MediaTooLargeError, match="budget"):
        b.acquire(101)
    assert b.available_bytes == 100
    with pytest.raises(ValueError, match="total_bytes"):
        memory.Budget(0)


def test_lease_follows_the_tensor_and_its_views():
    b = memory.Budget(1000)
    t = memory.hold_for(torch.zeros(10), b.acquire(400))
    view = t[2:5]
    del t
    gc.collect()
    assert b.available_bytes == 600  # a view keeps the frames alive, so the bytes stay taken
    del view
    gc.collect()
    assert b.available_bytes == 1000


def test_installed_source_wins_and_none_falls_back(monkeypatch):
    b = memory.Budget(123)
    memory.set_budget_source(lambda: b)
    try:
        assert memory.budget() is b
        memory.set_budget_source(lambda: None)  # e.g. vLLM without --mm-ipc-gpu-memory-gb
        assert memory.budget() is None or memory.budget().total_bytes != 123
    finally:
        memory.set_budget_source(None)
