"""NVDEC backend on a real GPU: correctness against the CPU backend, concurrency, pool bounds,
hostile input without leaks. Skipped where CUDA is absent (see conftest)."""

import threading

import numpy as np
import pytest
import torch

import mmprep
from mmprep.decode import get_pool
from mmprep.testing import read_index

from .helpers import clip, report
from .hostile import cases

pytestmark = pytest.mark.gpu

CODECS = ["h264", "hevc", "vp9", "av1"]
SIZES = [(322, 242), (640, 360), (1280, 720)]


def on_cuda(data: bytes, codec: str, **kwargs) -> mmprep.Video:
    """decode_video on NVDEC; skip (with the GPU's reason) where this GPU has no NVDEC for the codec."""
    try:
        return mmprep.decode_video(data, device="cuda", **kwargs)
    except mmprep.UnsupportedCodecError as e:
        if codec == "av1":
            pytest.skip(f"this GPU's NVDEC does not decode AV1: {e}")
        raise


def diff_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.cpu().to(torch.int16) - b.cpu().to(torch.int16)).abs().float()
    return {"mean": d.mean().item(), "p99": torch.quantile(d.flatten()[:: max(1, d.numel() // 2_000_000)], 0.99).item(), "max": d.max().item()}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_nvdec_matches_cpu_backend(codec, size):
    data = clip(codec, width=size[0], height=size[1], frames=40)
    gpu = on_cuda(data, codec)
    cpu = mmprep.decode_video(data, device="cpu")
    assert gpu.backend == "nvdec" and gpu.frames.is_cuda
    assert gpu.frames.shape == cpu.frames.shape == (40, size[1], size[0], 3)
    assert gpu.indices == cpu.indices
    assert [read_index(f) for f in gpu.frames.cpu().numpy()] == list(range(40))
    s = diff_stats(gpu.frames, cpu.frames)
    report("nvdec_vs_cpu", codec=codec, size=f"{size[0]}x{size[1]}", **s)
    assert s["mean"] <= 2.0


@pytest.mark.parametrize("codec", CODECS)
def test_nvdec_sampling_picks_the_right_frames(codec):
    data = clip(codec, frames=96, gop=24, bframes=3 if codec in ("h264", "hevc") else 0)
    for kwargs in ({"num_frames": 8}, {"fps": 1}, {"indices": [95, 3, 50, 50]}):
        gpu = on_cuda(data, codec, **kwargs)
        cpu = mmprep.decode_video(data, device="cpu", **kwargs)
        assert gpu.indices == cpu.indices
        assert [read_index(f) for f in gpu.frames.cpu().numpy()] == gpu.indices
        assert diff_stats(gpu.frames, cpu.frames)["mean"] <= 2.0


def test_every_frame_alone_on_nvdec():
    for codec in ("h264", "hevc"):
        data = clip(codec, frames=72, gop=24, bframes=4)
        full = mmprep.decode_video(data, device="cuda")
        for i in range(72):
            one = mmprep.decode_video(data, indices=[i], device="cuda")
            assert torch.equal(one.frames[0], full.frames[i]), (codec, i)


def test_auto_picks_nvdec_and_falls_back_for_tiny_hevc():
    assert mmprep.decode_video(clip("h264", frames=8), device="auto").backend == "nvdec"
    tiny = clip("hevc", width=96, height=64, frames=8)  # under NVDEC's HEVC minimum 144x144
    assert mmprep.decode_video(tiny, device="auto").backend == "cpu"
    with pytest.raises(mmprep.UnsupportedCodecError, match="outside NVDEC limits"):
        mmprep.decode_video(tiny, device="cuda")


def test_auto_falls_back_to_cpu_where_nvdec_refuses_the_codec():
    data = clip("av1", width=640, height=360, frames=8)
    try:
        mmprep.decode_video(data, device="cuda")
    except mmprep.UnsupportedCodecError:
        v = mmprep.decode_video(data, device="auto")
        assert v.backend == "cpu" and [read_index(f) for f in v.frames.numpy()] == list(range(8))
    else:
        assert mmprep.decode_video(data, device="auto").backend == "nvdec"


def test_ten_bit_hevc():
    data = clip("hevc", width=640, height=360, frames=16, pix_fmt="yuv420p10le")
    gpu = mmprep.decode_video(data, device="cuda")
    cpu = mmprep.decode_video(data, device="cpu")
    assert [read_index(f) for f in gpu.frames.cpu().numpy()] == list(range(16))
    s = diff_stats(gpu.frames, cpu.frames)
    report("nvdec_vs_cpu_10bit", **s)
    assert s["mean"] <= 2.0


def test_sixteen_threads_concurrently_and_pool_bounded():
    pool = get_pool()
    clips = [clip(c, width=640, height=360, frames=48) for c in ("h264", "hevc", "vp9")]
    want = [mmprep.decode_video(d, num_frames=12, device="cpu").frames for d in clips]
    errors, ok = [], [0]
    lock = threading.Lock()

    def work(t):
        try:
            for k in range(6):
                i = (t + k) % len(clips)
                v = mmprep.decode_video(clips[i], num_frames=12, device="cuda")
                assert [read_index(f) for f in v.frames.cpu().numpy()] == v.indices
                assert diff_stats(v.frames, want[i])["mean"] <= 2.0
                with lock:
                    ok[0] += 1
        except Exception as e:  # surfaced below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = pool.stats()
    report("concurrency", ok=ok[0], stats=st)
    assert not errors, errors[:3]
    assert ok[0] == 96
    assert st["peak_live"] <= sum(st["size"].values())
    for g in st["live"]:
        assert st["live"][g] <= st["size"][g] and st["busy"][g] == 0


@pytest.mark.parametrize("backend", ["cuvid", "pynvvideocodec"])
@pytest.mark.parametrize("split", ["threads", "interleave"])
def test_split_decode_on_two_sessions_equals_one_pass(monkeypatch, fresh_settings, split, backend):
    """A long plan cut at a keyframe runs on two sessions at once (the second half on a helper thread, or both fed
    by one thread in turn); the frames are those of one pass."""
    import time

    import mmprep.decode.video_nvdec as vn
    from mmprep.config import settings

    monkeypatch.setenv("MMPREP_NVDEC_BACKEND", backend)
    monkeypatch.setattr(vn, "_pool", None)  # sessions of this backend
    data = clip("h264", width=1280, height=720, frames=240, gop=60, bframes=3)
    timed = {}
    got = {}
    for mode in (split, "0"):
        monkeypatch.setenv("MMPREP_NVDEC_SPLIT", mode)
        settings.cache_clear()
        mmprep.decode_video(data, device="cuda")  # warm both sessions
        helpers = get_pool().stats()["helpers"]
        t0 = time.perf_counter()
        v = mmprep.decode_video(data, device="cuda")
        torch.cuda.synchronize()
        timed[mode] = time.perf_counter() - t0
        got[mode] = (v, get_pool().stats()["helpers"] - helpers)
    (on, lent_on), (off, lent_off) = got[split], got["0"]
    report(f"nvdec_split_{split}_{backend}", ms_split=1000 * timed[split], ms_one_pass=1000 * timed["0"])
    assert (lent_on, lent_off) == (1, 0)
    assert torch.equal(on.frames, off.frames)
    assert [read_index(f) for f in on.frames.cpu().numpy()] == list(range(240))
    monkeypatch.setenv("MMPREP_NVDEC_SPLIT", split)
    settings.cache_clear()
    for kwargs in ({"num_frames": 16}, {"indices": [239, 0, 130, 61, 61]}):
        part = mmprep.decode_video(data, device="cuda", **kwargs)
        assert torch.equal(part.frames, off.frames[part.indices])


def test_sessions_are_reused_across_calls():
    data = clip("h264", frames=24)
    mmprep.decode_video(data, device="cuda")
    before = get_pool().stats()["created"]
    for _ in range(10):
        mmprep.decode_video(data, num_frames=4, device="cuda")
    assert get_pool().stats()["created"] == before


def test_unsupported_codec_on_cuda():
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as out:
        s = out.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = 320, 240, "yuvj420p"
        for i in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with pytest.raises(mmprep.UnsupportedCodecError, match="mjpeg"):
        mmprep.decode_video(buf.getvalue(), device="cuda")
    assert mmprep.decode_video(buf.getvalue(), device="auto").backend == "cpu"


def test_hostile_inputs_on_cuda_leave_no_leak():
    bad = cases()
    # a stream NVDEC accepts at probe time but whose packets are garbage
    good = clip("h264", width=640, height=360, frames=24)
    garbled = bytearray(good)
    rng = np.random.default_rng(7)
    garbled[len(good) // 3 : len(good) * 2 // 3] = rng.integers(0, 256, len(good) // 3, dtype=np.uint8).tobytes()
    bad["garbled_payload"] = (bytes(garbled), {}, (mmprep.MediaError, type(None)))
    mmprep.decode_video(good, device="cuda")  # warm: pool session + allocator
    torch.cuda.synchronize()
    pool = get_pool()
    base_mem = torch.cuda.memory_allocated()
    base = pool.stats()
    names = sorted(bad)
    raised = 0
    for i in range(200):
        data, kwargs, err = bad[names[i % len(names)]]
        try:
            mmprep.decode_video(data, device="cuda", **kwargs)
        except mmprep.MediaError:
            raised += 1
    torch.cuda.synchronize()
    after = pool.stats()
    report("hostile_cuda", raised=raised, base_mem=base_mem, after_mem=torch.cuda.memory_allocated(), base=base, after=after)
    assert raised >= 200 - 200 // len(names) - 1
    assert torch.cuda.memory_allocated() == base_mem
    assert all(v == 0 for v in after["busy"].values())
    assert sum(after["live"].values()) <= sum(after["size"].values())
    v = mmprep.decode_video(good, num_frames=4, device="cuda")
    assert [read_index(f) for f in v.frames.cpu().numpy()] == v.indices


@pytest.mark.parametrize("split", ["threads", "interleave"])
def test_a_split_decode_of_a_damaged_stream_leaves_no_leak(monkeypatch, fresh_settings, split):
    """Garbage in the second half of a long stream (the helper session's part): a MediaError or frames, and either
    way both sessions go back to the pool and the GPU memory to its baseline."""
    monkeypatch.setenv("MMPREP_NVDEC_SPLIT", split)
    good = clip("h264", width=640, height=360, frames=240, gop=60, bframes=3)
    mmprep.decode_video(good, device="cuda")  # warm: both sessions + allocator
    torch.cuda.synchronize()
    pool = get_pool()
    base_mem, helpers = torch.cuda.memory_allocated(), pool.stats()["helpers"]
    outcomes = []
    for seed in range(6):
        garbled = bytearray(good)
        rng = np.random.default_rng(seed)
        lo, hi = len(good) * 6 // 10, len(good) * 9 // 10
        garbled[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
        try:
            mmprep.decode_video(bytes(garbled), device="cuda")
            outcomes.append("frames")
        except mmprep.MediaError as e:
            outcomes.append(type(e).__name__)
    torch.cuda.synchronize()
    after = pool.stats()
    report(f"split_damaged_{split}", outcomes=outcomes, helpers=after["helpers"] - helpers)
    assert after["helpers"] > helpers  # the damaged streams did take the split path
    assert all(v == 0 for v in after["busy"].values())
    assert torch.cuda.memory_allocated() == base_mem
    v = mmprep.decode_video(good, device="cuda")
    assert [read_index(f) for f in v.frames.cpu().numpy()] == list(range(240))


def test_fused_kernel_matches_torch_path():
    from mmprep.decode.color import coefficients, nv12_to_rgb
    from mmprep.kernels import fused

    kern = fused(wait=True)
    assert kern is not None, "nvcc is on the GPU machine: the fused kernel must build there"
    g = torch.Generator(device="cuda").manual_seed(0)
    for (w, h) in ((322, 242), (1920, 1080), (321, 241)):
        rows = h + (h + 1) // 2
        # a pitched surface, as NVDEC hands out (odd widths read one chroma column past the crop)
        nv12 = torch.randint(0, 256, (rows, w + 64), dtype=torch.uint8, device="cuda", generator=g)[:, : w + w % 2]
        for matrix, full in (("bt601", False), ("bt709", False), ("bt709", True)):
            want = nv12_to_rgb(nv12[None].contiguous(), h, w, matrix=matrix, full_range=full)[0]
            got = torch.empty((h, w, 3), dtype=torch.uint8, device="cuda")
            kern.nv12_to_rgb(nv12, h, w, got, list(coefficients(matrix)), full)
            d = (got.int() - want.int()).abs()
            report("fused_vs_torch", size=f"{w}x{h}", matrix=matrix, full=full, mean=d.float().mean().item(), max=d.max().item())
            assert d.max().item() <= 1 and d.float().mean().item() < 0.01


def test_torch_fallback_path_decodes_the_same(monkeypatch):
    import mmprep.decode.video_nvdec as vn
    from mmprep.kernels import fused

    assert fused(wait=True) is not None
    data = clip("h264", width=640, height=360, frames=24)
    with_kernel = mmprep.decode_video(data, device="cuda").frames
    monkeypatch.setattr(vn, "fused", lambda: None)
    without = mmprep.decode_video(data, device="cuda").frames
    d = (with_kernel.int() - without.int()).abs()
    assert d.max().item() <= 1


def _backend_frames(monkeypatch, backend: str, data: bytes, codec: str, delay: int = 2,
                    **kwargs) -> tuple[torch.Tensor, int]:
    """Frames from a fresh pool of ``backend`` sessions (cuvid: parser display ``delay``), and how many CUDA
    operations (kernels, copies) they took."""
    import mmprep.decode.video_nvdec as vn
    from torch.profiler import ProfilerActivity, profile

    from mmprep.config import settings

    monkeypatch.setenv("MMPREP_NVDEC_BACKEND", backend)
    monkeypatch.setenv("MMPREP_NVDEC_SPLIT", "0")
    monkeypatch.setenv("MMPREP_NVDEC_DISPLAY_DELAY", str(delay))
    settings.cache_clear()
    monkeypatch.setattr(vn, "_pool", None)
    on_cuda(data, codec, **kwargs)  # creates the session outside the profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        frames = on_cuda(data, codec, **kwargs).frames
        torch.cuda.synchronize()
    ops = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    settings.cache_clear()
    return frames, ops


@pytest.mark.parametrize("codec,kwargs", [
    ("h264", dict(width=640, height=360, bframes=3)),
    ("h264", dict(width=322, height=242, bframes=0)),
    ("hevc", dict(width=1280, height=720, bframes=3)),
    ("hevc", dict(width=640, height=360, pix_fmt="yuv420p10le")),
    ("vp9", dict(width=640, height=360)),
    ("av1", dict(width=640, height=360)),
], ids=["h264-b", "h264-small-no-b", "hevc-b", "hevc-10bit", "vp9", "av1"])
def test_cuvid_backend_equals_pynvvideocodec_and_maps_only_sampled_pictures(monkeypatch, codec, kwargs):
    """mmprep's own NVDEC binding gives PyNvVideoCodec's frames bit for bit, for every frame and for a sample;
    sampling 4 of 96 pictures, it puts far fewer operations on the GPU (PyNvVideoCodec maps and copies every
    picture it decodes: the context switches that cost a co-located engine its throughput)."""
    data = clip(codec, frames=96, gop=96, **kwargs)
    for sample in ({}, {"indices": [5, 40, 41, 90]}):
        ours, ops_ours = _backend_frames(monkeypatch, "cuvid", data, codec, **sample)
        theirs, ops_theirs = _backend_frames(monkeypatch, "pynvvideocodec", data, codec, **sample)
        assert ours.shape == theirs.shape and torch.equal(ours, theirs), diff_stats(ours, theirs)
        if sample:
            report(f"cuvid_ops_{codec}", cuvid=ops_ours, pynvvideocodec=ops_theirs)
            assert ops_ours * 3 < ops_theirs, (ops_ours, ops_theirs)


def test_odd_picture_sizes_decode_with_cuvid_and_are_refused_by_pynvvideocodec(monkeypatch):
    """A 321x241 VP9 stream (odd sizes exist in VP9/AV1): mmprep's binding decodes it like the CPU decoder. With
    PyNvVideoCodec's decoder such a picture faulted on the GPU (the CUDA context was lost, H200 2026-11-28), so
    that backend refuses odd sizes before decoding, and the GPU keeps working."""
    data = clip("vp9", frames=48, gop=48, width=321, height=241)
    cpu = mmprep.decode_video(data, device="cpu")
    for sample in ({}, {"indices": [5, 20, 21, 47]}):
        ours, _ = _backend_frames(monkeypatch, "cuvid", data, "vp9", **sample)
        want = cpu.frames if not sample else cpu.frames[sample["indices"]]
        assert ours.shape == want.shape == (len(want), 241, 321, 3)
        assert [read_index(f) for f in ours.cpu().numpy()] == (sample.get("indices") or list(range(48)))
        assert diff_stats(ours, want)["mean"] <= 2.0
    from mmprep.config import settings

    try:
        with pytest.raises(mmprep.UnsupportedCodecError, match="odd picture sizes .321x241."):
            _backend_frames(monkeypatch, "pynvvideocodec", data, "vp9")
        assert mmprep.decode_video(clip("vp9", frames=8), device="cuda").frames.is_cuda
    finally:
        settings.cache_clear()  # later tests read the environment monkeypatch restores


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_cuvid_display_delay_changes_no_frame(monkeypatch, codec):
    """Letting the parser decode ahead (B-frames reordered, more surfaces in use) shows the same pictures in the same
    order as showing each at once, for every frame and for a sample."""
    data = clip(codec, frames=60, gop=30, width=640, height=360, bframes=3)
    for sample in ({}, {"indices": [0, 7, 8, 31, 59]}):
        at_once, _ = _backend_frames(monkeypatch, "cuvid", data, codec, delay=0, **sample)
        for delay in (1, 4):
            ahead, _ = _backend_frames(monkeypatch, "cuvid", data, codec, delay=delay, **sample)
            assert ahead.shape == at_once.shape and torch.equal(ahead, at_once), (delay, diff_stats(ahead, at_once))


def test_cuvid_is_the_default_backend():
    from mmprep.decode.cuvid import CuvidDecoder

    mmprep.decode_video(clip("h264", frames=8), device="cuda")
    sessions = [s for idle in get_pool()._idle.values() for s in idle]
    assert sessions and all(isinstance(s.decoder, CuvidDecoder) for s in sessions)
