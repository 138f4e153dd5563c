"""The vLLM plugin's loaders decoding through ``mmprep.service`` workers (``MMPREP_WORKERS``), CPU workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmprep
from mmprep import service

from .helpers import clip

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install mmprep[test])")


@pytest.fixture(scope="module")
def loaders():
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    from mmprep.vllm import register

    register()
    with service.MediaService(gpus=[], cpu_workers=1) as svc:  # CPU workers also on a GPU host
        yield VIDEO_LOADER_REGISTRY, svc
    service.set_shared(None)


@pytest.mark.parametrize("name,kwargs", [("mmprep_qwen2_vl", {}), ("mmprep", {"num_frames": 6}),
                                         ("mmprep_qwen3_vl", {"num_frames": 8})])
def test_loader_through_service_equals_in_process(loaders, name, kwargs):
    reg, svc = loaders
    data = clip("h264", width=320, height=240, frames=60, fps=20, gop=20)
    loader = reg.load(name)
    service.set_shared(None)
    served = svc.stats()["workers"][0]["served"]
    ref, ref_meta = loader.load_bytes(data, device="cpu", **kwargs)
    assert svc.stats()["workers"][0]["served"] == served  # in-process: the service was not asked
    service.set_shared(svc)
    try:
        frames, meta = loader.load_bytes(data, **kwargs)  # device "auto": the service's (CPU) worker
        assert svc.stats()["workers"][0]["served"] == served + 1  # vLLM's sampler and the decode ran in the worker
        assert meta == ref_meta and np.array_equal(frames, ref)
        here, here_meta = loader.load_bytes(data, device="cpu", **kwargs)  # asked for this process's CPU
        assert svc.stats()["workers"][0]["served"] == served + 1
        assert here_meta == ref_meta and np.array_equal(here, ref)
    finally:
        service.set_shared(None)


def test_bad_media_through_service_are_media_errors(loaders):
    reg, svc = loaders
    service.set_shared(svc)
    try:
        with pytest.raises(mmprep.CorruptMediaError):
            reg.load("mmprep_qwen2_vl").load_bytes(b"\x00" * 5000)
    finally:
        service.set_shared(None)


def test_shared_service_is_off_by_default():
    service.set_shared(None)
    assert service.shared() is None


def test_loader_through_the_host_service(loaders, tmp_path):
    """``MMPREP_SERVICE``: the loader's vLLM sampler is pickled to the host's service and run in its worker."""
    import os
    import signal
    import time

    from mmprep.service.host import attach

    reg, _ = loaders
    address = f"/tmp/mmprep-vllm-test-{os.getpid()}-{time.monotonic_ns()}.sock"
    host = attach(address, gpus=[], cpu_workers=1)
    try:
        data = clip("h264", width=320, height=240, frames=60, fps=20, gop=20)
        loader = reg.load("mmprep_qwen2_vl")
        service.set_shared(None)
        ref, ref_meta = loader.load_bytes(data, device="cpu")
        service.set_shared(host)
        frames, meta = loader.load_bytes(data)
        assert meta == ref_meta and np.array_equal(frames, ref)
        assert sum(w["served"] for w in host.stats()["workers"]) == 1
    finally:
        service.set_shared(None)
        os.kill(host.stats()["pid"], signal.SIGTERM)
        for suffix in (".key", ".lock", ".log"):
            if os.path.exists(address + suffix):
                os.unlink(address + suffix)


def test_connector_images_through_service(loaders):
    """``VLLM_MEDIA_CONNECTOR=mmprep`` with ``MMPREP_WORKERS``: images decode in a worker, same pixels."""
    from mmprep.vllm.connector import MmprepImageMediaIO

    from .images import jpeg

    _, svc = loaders
    data = jpeg(203, 317)
    ref = MmprepImageMediaIO(device="cpu").load_bytes(data)
    served = svc.stats()["workers"][0]["served"]
    service.set_shared(svc)
    try:
        got = MmprepImageMediaIO().load_bytes(data)  # device "auto": the service's (CPU) worker
        assert svc.stats()["workers"][0]["served"] == served + 1
        here = MmprepImageMediaIO(device="cpu").load_bytes(data)  # asked for this process's CPU
        assert svc.stats()["workers"][0]["served"] == served + 1
    finally:
        service.set_shared(None)
    assert torch.equal(got.media, ref.media) and got.original_bytes == data
    assert torch.equal(here.media, ref.media)
