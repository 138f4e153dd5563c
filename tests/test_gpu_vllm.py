"""The vLLM plugin on the GPU: CUDA frames from the loader, vLLM's frontend GPU budget, and the
hand-off of mmprep's tensors through vLLM's own tensor-IPC classes (``--mm-tensor-ipc torch_shm``).

Needs vLLM's Python sources importable (the GPU machine runs them without vLLM's compiled kernels).
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

import mmprep
from mmprep.vllm import identity

from .helpers import clip, report, vllm_plugins_loaded

pytestmark = pytest.mark.gpu

vllm = pytest.importorskip("vllm.multimodal.video", reason="vLLM is not importable here")


@pytest.fixture(scope="module")
def registry():
    """vLLM's plugins loaded with mmprep routed (found through its entry point); afterwards as they were."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    with vllm_plugins_loaded(VLLM_VIDEO_LOADER_BACKEND="mmprep", VLLM_PLUGINS="mmprep"):
        assert "mmprep_qwen2_vl" in VIDEO_LOADER_REGISTRY.name2class
        yield VIDEO_LOADER_REGISTRY


def test_loader_keeps_frames_on_gpu_within_vllm_budget(registry):
    from vllm.multimodal.gpu_ipc_memory import maybe_init_mm_gpu_ipc_pool, set_mm_gpu_ipc_pool

    data = clip("h264", width=640, height=360, frames=60, fps=20, gop=20)
    pool = maybe_init_mm_gpu_ipc_pool(0.03)  # --mm-ipc-gpu-memory-gb 0.03 (32 MB)
    try:
        loader = registry.load("mmprep_qwen2_vl")
        frames, meta = loader.load_bytes(data, device="cuda")
        assert isinstance(frames, torch.Tensor) and frames.is_cuda and meta["video_backend"] == "mmprep"
        ident = identity.tag_of((frames, meta))  # vLLM identifies GPU frames by it, never hashing pixels
        other = registry.load("mmprep").load_bytes(data, device="cuda", num_frames=3, frames_on="device")[0]  # other frames
        assert ident is not None and identity.tag_of(other) not in (None, ident)
        del other
        assert pool.available_bytes == pool.total_bytes - frames.numel()  # held while the frames live
        ref, ref_meta = registry.load("qwen2_vl").load_bytes(data)
        assert meta["frames_indices"] == ref_meta["frames_indices"] and meta["fps"] == ref_meta["fps"]
        diff = np.abs(frames.cpu().numpy().astype(np.int16) - ref.astype(np.int16))
        report("vllm_loader_nvdec_vs_opencv", mean=float(diff.mean()), max=int(diff.max()))
        assert diff.mean() < 1.5
        host, _ = loader.load_bytes(data, device="cuda", frames_on="host")
        assert isinstance(host, np.ndarray) and np.array_equal(host, frames.cpu().numpy())
        del frames
        assert pool.available_bytes == pool.total_bytes
        with pytest.raises(mmprep.MediaTooLargeError):  # more than the whole budget: refused at once
            registry.load("mmprep").load_bytes(data, num_frames=60, device="cuda")
        assert pool.available_bytes == pool.total_bytes
    finally:
        set_mm_gpu_ipc_pool(None)


def _engine_side(queue, bufs, conn) -> None:
    """Child standing in for vLLM's engine core: decode with vLLM's MsgpackDecoder + TensorIpcReceiver."""
    import torch
    from vllm.v1.engine.tensor_ipc import TensorIpcReceiver
    from vllm.v1.serial_utils import MsgpackDecoder

    torch.cuda.init()
    base = torch.cuda.memory_allocated()
    t = MsgpackDecoder(torch.Tensor, oob_tensor_provider=TensorIpcReceiver(queue)).decode(bufs)
    conn.send((str(t.device), t.dtype == torch.bfloat16, float(t.double().sum().item()),
               torch.cuda.memory_allocated() - base))


def test_mmprep_tensor_through_vllm_tensor_ipc(registry):
    from vllm.v1.engine.tensor_ipc import TensorIpcSender
    from vllm.v1.serial_utils import MsgpackEncoder

    video = mmprep.decode_video(clip("h264", width=640, height=360, frames=48), num_frames=8, device="cuda")
    pv = mmprep.preprocess(videos=[video], dtype=torch.bfloat16, device="cuda")["pixel_values_videos"]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    bufs = MsgpackEncoder(oob_tensor_consumer=TensorIpcSender(queue)).encode(pv)
    assert sum(len(b) for b in bufs) < 1024  # only metadata went through msgpack; the tensor went by IPC
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_engine_side, args=(queue, [bytes(b) for b in bufs], child), daemon=True)
    p.start()
    assert parent.poll(120), "engine-side process sent nothing"
    device, is_bf16, checksum, extra_alloc = parent.recv()
    p.join(30)
    report("vllm_tensor_ipc", device=device, checksum_equal=checksum == float(pv.double().sum().item()),
           consumer_allocated=extra_alloc)
    assert device.startswith("cuda") and is_bf16 and checksum == float(pv.double().sum().item())
    assert extra_alloc == 0
