"""Repeated videos through the vLLM loaders are decoded once (``MMPREP_MEDIA_CACHE_MB``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmprep import memory
from mmprep.vllm import media_cache as mc

from .helpers import clip

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install mmprep[test])")


@pytest.fixture()
def cache(monkeypatch):
    c = mc.MediaCache(64 << 20)
    monkeypatch.setattr(mc, "_cache", [c])
    yield c


@pytest.fixture(scope="module")
def registry():
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    from mmprep.vllm import register

    register()
    return VIDEO_LOADER_REGISTRY


def test_repeat_is_served_from_the_cache(cache, registry, monkeypatch):
    from mmprep.vllm import loader as loader_mod

    calls = []
    real = loader_mod.decode_video
    monkeypatch.setattr(loader_mod, "decode_video", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = clip("h264", width=320, height=240, frames=60, fps=20, gop=20)
    load = registry.load("mmprep_qwen2_vl").load_bytes
    frames, meta = load(data, device="cpu")
    again, meta2 = load(data, device="cpu")
    assert len(calls) == 1 and again is frames and meta2 == meta and meta2 is not meta
    other, _ = load(data, device="cpu", fps=1)  # another option: another entry, decoded
    assert len(calls) == 2 and other.shape[0] != frames.shape[0]
    ref, ref_meta = registry.load("qwen2_vl").load_bytes(data)  # vLLM's own loader: same frames as the hit
    assert meta2["frames_indices"] == ref_meta["frames_indices"] and np.array_equal(again, ref)
    assert cache.stats()["hits"] == 1 and cache.stats()["items"] == 2


def test_least_recently_used_goes_first_and_capacity_holds():
    c = mc.MediaCache(1000)
    a, b, d = (np.zeros(400, np.uint8) for _ in range(3))
    c.put("a", a, {})
    c.put("b", b, {})
    assert c.get("a") is not None  # a is now the most recent
    c.put("d", d, {})  # 1200 bytes > 1000: b goes
    assert c.get("b") is None and c.get("a") is not None and c.get("d") is not None
    assert c.stats()["bytes"] == 800
    c.put("big", np.zeros(2000, np.uint8), {})  # larger than the whole cache: not kept, nothing evicted
    assert c.get("big") is None and c.stats()["items"] == 2
    with pytest.raises(ValueError, match="capacity_bytes"):
        mc.MediaCache(0)


def test_gpu_budget_caps_the_cache_at_half(monkeypatch):
    monkeypatch.setattr(memory, "budget", lambda: memory.Budget(1000))
    c = mc.MediaCache(1 << 20)
    c.put("x", torch.zeros(600, dtype=torch.uint8), {})  # over half of the 1000-byte budget
    assert c.get("x") is None
    c.put("y", torch.zeros(400, dtype=torch.uint8), {})
    assert c.get("y") is not None


def test_off_by_default():
    from mmprep.config import settings

    assert settings().media_cache_mb == 0
